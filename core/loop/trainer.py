"""The trainer stage: new human labels -> a new head version (ONNX, calibrated threshold) -> models."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter, defaultdict
import logging
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.codecs import MODELS
from winnow.core.domain.records import ModelVersion, Project
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.close import CLOSE_CHECK_S, min_train_labels, pending_close_requests
from winnow.core.loop.erase import ErasureWatch, forget_in_versions
from winnow.core.loop.stage import Stage
from winnow.core.loop.topics import topic
from winnow.core.ml.head import Head, load_head
from winnow.core.ml.reward import REWARD_FOLDER, fit_preference_head, laplace_precision, reward_of, save_reward
from winnow.core.ml.training import fit_head, train, write_version
from winnow.core.ports.bus import Bus
from winnow.core.ports.store import Store

log = logging.getLogger(__name__)

RETENTION_CHECK_S = 60.0  # how often the trainer drops the vectors retention no longer keeps


def model_folder(models_dir: Path, project: str, version: str) -> Path:
    """``models_dir/<slug>-<sha256>/version``: the project's folder is derived, never the name itself
    (``../x`` stays inside), and the resolved path is checked to be inside ``models_dir``."""
    root = Path(models_dir).resolve()
    slug = re.sub(r"[^A-Za-z0-9_-]", "_", project)[:40]
    digest = hashlib.sha256(project.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    folder = (root / f"{slug}-{digest}" / version).resolve()
    if not folder.is_relative_to(root) or folder.parent == root:
        raise InvalidInput("version", f"model folder {str(folder)[:200]!r} is outside {str(root)[:200]!r}")
    return folder


class Trainer(Stage):
    """labels -> a new head version when enough new human labels arrived -> models."""

    name = "trainer"
    stages = ("labels",)

    def __init__(self, bus: Bus, store: Store, project: Project, config: LoopConfig, models_dir: Path,
                 clock: Callable[[], float] = time.time,
                 on_version: Callable[[ModelVersion], None] | None = None) -> None:
        super().__init__(bus, store, project, config)
        self.models_dir, self.clock, self.on_version = Path(models_dir), clock, on_version
        self._close_check_at = self._retention_at = 0.0
        current = store.current_model(project.name)
        self.trained_on = 0 if current is None else current.n_train
        self.head: Head | None = None if current is None else load_head(Path(current.path))
        # every erasure on record at start: the version folders outlive the trainer
        self._erasures = ErasureWatch(store, project.name, True, config.erasure_check_s)

    def handle(self, records: list[tuple[str, object]]) -> None:
        self.maybe_train(force=False)

    def step(self, max_messages: int = 512, timeout_s: float = 0.0) -> int:
        """Handle one batch, then retrain on every human label if a close is waiting for it (checked
        after every batch that moved messages, else every ``CLOSE_CHECK_S``)."""
        handled = super().step(max_messages, timeout_s)
        if handled or time.monotonic() >= self._close_check_at:
            self._close_check_at = time.monotonic() + CLOSE_CHECK_S
            self.train_for_close()
        if time.monotonic() >= self._retention_at:
            self._retention_at = time.monotonic() + RETENTION_CHECK_S
            self.drop_old_embeddings()
        self.forget_erased()
        return handled

    def forget_erased(self) -> list[str]:
        """Take the vectors of items erased since the last look out of every version's neighbour vote
        on disk (``forget_in_versions``); the versions rewritten."""
        gone = {item_id for item_id, _ in self._erasures.new()}
        rewritten = forget_in_versions(self.store, self.project.name, gone) if gone else []
        if rewritten:
            log.info("trainer forgot project=%s erased=%d versions=%d", self.project.name, len(gone), len(rewritten))
        return rewritten

    def drop_old_embeddings(self) -> int:
        """Retention (``embedding_retention_s``): drop the stored vectors of items the model labeled
        that long ago; nothing reads them again, except self-training, which keeps the auto-accepted
        ones. Returns how many went."""
        keep = self.config.embedding_retention_s
        if keep is None:
            return 0
        families = ("low_confidence",) if self.config.self_training else ("auto_accept", "low_confidence")
        dropped = self.store.drop_model_embeddings(self.project.name, self.clock() - keep, families)
        if dropped:
            log.info("trainer dropped old embeddings project=%s dropped=%d", self.project.name, dropped)
        return dropped

    def train_for_close(self) -> ModelVersion | None:
        """A pending close labels the backlog with the current model: make it one that learned from
        every human label there is (also when an operator promoted an older version since)."""
        if not pending_close_requests(self.store, self.project.name):
            return None
        current = self.store.current_model(self.project.name)
        return self.maybe_train(force=True, again=current is not None and current.n_train < self.trained_on)

    def _due(self, n: int) -> bool:
        if self.trained_on == 0:
            return n >= self.config.first_model_labels
        grown = n - self.trained_on
        return grown >= max(self.config.retrain_min_new, self.config.retrain_growth * self.trained_on)

    def maybe_train(self, force: bool, again: bool = False) -> ModelVersion | None:
        """Train and register a new version when enough new human labels came (``force``: whenever
        any came; ``again``: even when none did, as the current version is not this trainer's last)."""
        humans = self.store.labels(self.project.name, "human")
        n = len(humans)
        if n < min_train_labels(self.config) or (n == self.trained_on and not again) or not (force or self._due(n)):
            return None
        classes = {c: k for k, c in enumerate(self.project.classes)}
        emb = self.store.get_embeddings(self.project.name, [h.item_id for h in humans])
        y = np.array([classes[h.label] for h in humans])
        gold = self.store.gold(self.project.name)
        gold_ids = list(gold)
        gold_emb = self.store.get_embeddings(self.project.name, gold_ids) if gold_ids else None
        gold_y = np.array([classes[gold[i]] for i in gold_ids]) if gold_ids else None
        # the threshold's sample: the items drawn where the model would (or almost would) label them,
        # each once or standing for 1 / (its draw's probability) items there (``TrainConfig.threshold_weights``);
        # people's other picks are the hard items and would bias it
        drawn = {t.item_id: t.probability for t in self.store.tasks(self.project.name, ("holdout", "audit"))}
        # answers with no majority (three people, three answers) leave the label a guess: kept out of
        # the sample, which only lowers its precision estimate (the first of them erred, and people
        # are asked again where an answer contradicts the model, so the model tends to be right there)
        votes: dict[str, Counter] = defaultdict(Counter)
        for a in self.store.annotations(self.project.name, [i for i in drawn]):
            votes[a.item_id][a.label] += 1
        unsettled = {i for i, v in votes.items() if sum(v.values()) >= 2 and 2 * max(v.values()) <= sum(v.values())}
        sample = np.array([drawn.get(h.item_id, 0.0) > 0 and h.item_id not in unsettled for h in humans])
        weights = np.array([1.0 / drawn[h.item_id] if ok else 1.0 for h, ok in zip(humans, sample)])
        extra_emb = extra_y = None
        if self.config.self_training:  # the certified model labels join the final fit
            auto = [label for label in self.store.labels(self.project.name, "model") if label.aggregation == "auto_accept"]
            if auto:
                extra_emb = self.store.get_embeddings(self.project.name, [label.item_id for label in auto])
                extra_y = np.array([classes[label.label] for label in auto])
        # a preference project's head is its Bradley-Terry reward model (``fit_preference_head``)
        fitter = fit_preference_head if self.project.preference else fit_head
        result = train(emb, y, len(classes), self.project.precision_target, self.config.train,
                       init=self.head, gold_embeddings=gold_emb, gold_labels=gold_y, threshold_mask=sample,
                       threshold_weights=weights,
                       extra_embeddings=extra_emb, extra_labels=extra_y, fitter=fitter,
                       ids=[h.item_id for h in humans])
        version = f"v{len(self.store.models(self.project.name)) + 1:04d}-n{n}"
        folder = model_folder(self.models_dir, self.project.name, version)
        encoder = self.store.project_encoder(self.project.name)
        extra = None
        if self.project.preference:  # the reward itself, for reward-model users: reward/ (reward.onnx: e -> r)
            # with its Laplace posterior's precision on the comparisons it was fitted on: the selector's EPIG
            reward = reward_of(result.head)
            fitted = emb if extra_emb is None else np.concatenate([emb, extra_emb])
            reward = dataclasses.replace(reward, n_train=len(fitted),
                                         precision=laplace_precision(fitted, reward.weight[0]))

            def extra(tmp: Path) -> None:
                save_reward(tmp / REWARD_FOLDER, reward, {"version": version, "encoder": encoder})
        write_version(folder, result, version, self.project.classes, self.config.train, encoder, extra)
        threshold = result.threshold.threshold
        model = ModelVersion(self.project.name, version, str(folder), self.clock(), n, result.temperature,
                             float(threshold), result.metrics)
        self.store.register_model(model)
        self.producer.publish_many(topic(self.project.name, "models"), MODELS.keyed([model]))
        self.producer.flush()
        self.head, self.trained_on = result.head, n
        log.info("trainer registered project=%s version=%s n_train=%d threshold=%.4f heldout_accuracy=%.3f",
                 self.project.name, version, n, threshold, result.metrics["heldout_accuracy"])
        if self.on_version is not None:
            self.on_version(model)
        return model
