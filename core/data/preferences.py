"""Preference pairs from JSONL files: the DPO / reward-model layout (``prompt``, ``chosen``,
``rejected``) and Anthropic's HH-RLHF layout (two whole dialogues, ``chosen`` and ``rejected``, that
share every turn but the last reply), and the shipped HH-RLHF harmlessness test split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from winnow.core.data.files import read_text, split_lines
from winnow.core.domain.errors import InvalidInput

_ASSISTANT, _HUMAN = "\n\nAssistant:", "\n\nHuman:"


@dataclass(frozen=True)
class PreferencePair:
    """A prompt, the reply people preferred and the one they did not; ``context`` is what a reply's
    features are read with (the prompt, or a dialogue's last human turn)."""

    pair_id: str
    prompt: str
    chosen: str
    rejected: str
    context: str

    def feature_text(self, reply: str) -> str:
        return f"{self.context}\n{reply}"


def _split_dialogue(dialogue: str) -> tuple[str, str]:
    k = dialogue.rfind(_ASSISTANT)
    return (dialogue[:k], dialogue[k + len(_ASSISTANT):].strip()) if k >= 0 else ("", dialogue.strip())


def parse_pairs(lines: list[str], source: str = "file") -> list[PreferencePair]:
    """Pairs from JSONL lines (blank lines skipped). A line with ``prompt`` is the DPO layout; without
    it, HH-RLHF dialogues, whose prompt is their shared prefix: a line whose dialogues differ before
    their last reply is skipped (it has no one prompt). InvalidInput naming ``line N`` and the field."""
    pairs = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise InvalidInput(f"line {n}", f"is not JSON: {e}") from None
        if not isinstance(row, dict):
            raise InvalidInput(f"line {n}", "must be a JSON object")
        for field in ("chosen", "rejected") + (("prompt",) if "prompt" in row else ()):
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise InvalidInput(f"line {n}: {field}", "is missing or empty")
        pair_id = str(row.get("id", f"{source}-{n}"))
        if "prompt" in row:
            pairs.append(PreferencePair(pair_id, row["prompt"], row["chosen"], row["rejected"], row["prompt"]))
            continue
        prompt, chosen = _split_dialogue(row["chosen"])
        other, rejected = _split_dialogue(row["rejected"])
        if prompt != other or not chosen or not rejected:
            continue
        h = prompt.rfind(_HUMAN)
        context = prompt[h + len(_HUMAN):].strip() if h >= 0 else prompt.strip()
        pairs.append(PreferencePair(pair_id, prompt, chosen, rejected, context))
    return pairs


def load_pairs(path: Path) -> list[PreferencePair]:
    """Pairs from a ``.jsonl`` or ``.jsonl.gz`` file (see :func:`parse_pairs`)."""
    path = Path(path)
    return parse_pairs(split_lines(read_text(path)), path.name.split(".")[0])


def hh_rlhf_harmless() -> list[PreferencePair]:
    """The shipped HH-RLHF harmlessness test split (MIT; offensive texts: benchmarks and tests only)."""
    folder = resources.files("winnow.core.data") / "hh_rlhf_harmless"
    with resources.as_file(folder / "test.jsonl.gz") as path:
        return load_pairs(path)
