"""The selector stage: items.scored -> a look at each item with a known chance of a person (tasks),
auto-accepted model labels, and the backlog of items no certified threshold covers yet; serves
close-of-stream requests.

A *look* is a moment where the selector decides an item: at arrival, when a new model version
re-scores the backlog and now clears its threshold, and at close. At every look the item first gets
its probability of going to a person (:mod:`winnow.core.select.sampling`), then the draw. Where the
model would label it (an audit look), a drawn item's human answer checks the model's label, and an
undrawn item gets that label with its probability recorded: the certified bounds
(:mod:`winnow.core.ml.certify`, :mod:`winnow.core.loop.quality`) are built from exactly these.

Arriving items come scored: the prelabel worker's message carries its version's probabilities and
uncertainty, which the selector takes where it runs the same version (its own head scores the others,
and the backlog at a swap), so the model and its neighbours' vote run once per item, in the stage that
scales out.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
from winnow.core.domain.codecs import TASKS
from winnow.core.domain.errors import ModelFileError, NotFound
from winnow.core.domain.records import ArrivalDraw, Label, ModelVersion, Project, Scored, Task
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.close import (
    CLOSE_CHECK_S,
    CLOSE_WAIT_LOG_S,
    model_behind,
    pending_close_requests,
    record_close,
)
from winnow.core.loop.backlog import Backlog
from winnow.core.loop.erase import ErasureWatch
from winnow.core.loop.quality import certified_quality, family_trials, withdrawn_versions
from winnow.core.loop.labels_out import republish_own, republish_stored, same_stage, write_final_labels
from winnow.core.loop.stage import Stage
from winnow.core.loop.topics import consumer_group, shard, topic
from winnow.core.ml.autoaccept import rule_out_items, threshold_for_mix
from winnow.core.ml.certify import hidden_errors_lower
from winnow.core.ml.evaluation import evaluation_probabilities
from winnow.core.ml.head import OnnxHead
from winnow.core.ml.reward import REWARD_FOLDER, load_reward_fit
from winnow.core.ml.scoring import mean_probs, uncertainty
from winnow.core.ml.training import Checks
from winnow.core.ports.bus import Bus
from winnow.core.ports.store import Store
from winnow.core.select.index import max_similarity_to
from winnow.core.select.pairs import PairInformation, TargetSample
from winnow.core.select.sampling import StreamSampler, draw_with_extra, spread, uniforms
from winnow.core.select.strategies import BudgetController, Candidates, NearDuplicateGuard, make_strategy

log = logging.getLogger(__name__)


AUTO, LOW = "auto_accept", "low_confidence"  # the certified families of model labels
EPIG_TARGETS = 500  # comparisons sampled from the arrivals as a preference project's EPIG targets
GUARD_GROUPS = 8  # most groups of rows one guard check runs (``Selector._guard_similarity``)


def pick_rounds(wanted: int, size: int) -> list[int]:
    """``wanted`` picks as rounds of ``size`` (>= 1), the last taking the remainder: 137, 25 ->
    [25, 25, 25, 25, 37]; fewer than ``2 * size`` go in one round."""
    rounds = [size] * max(wanted // size - 1, 0)
    return rounds + [wanted - sum(rounds)] if wanted > 0 else []


class Selector(Stage):
    """items.scored -> tasks (drawn with known probabilities), auto-accepted model labels, or the backlog.

    Keeps the backlog (scored items with neither a final label nor a task) in memory, rebuilt from
    the store on start. When a new model lands it re-scores the whole backlog and takes an audit look
    at the items that now clear the threshold, and re-ranks the open tasks.
    """

    name = "selector"
    stages = ("items.scored", "models")
    refute_check_s = 10.0  # least seconds between two reads of the current version's audits (``_refuted``)

    def __init__(self, bus: Bus, store: Store, project: Project, config: LoopConfig,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(bus, store, project, config)
        self.clock = clock
        self.strategy = make_strategy(project.strategy)
        self.rng = np.random.default_rng(config.seed)
        self.budget = BudgetController(project.budget_labels, project.budget_per_items)
        self.sampler = StreamSampler(self.budget)
        # model evaluation's own budget (preference projects): it starts afresh at every start, so it never
        # spends more than its rate, and at most a label's worth of credit is lost per restart
        self.evaluation = (StreamSampler(BudgetController(config.evaluation_budget, 100))
                           if project.preference and config.evaluation_budget else None)
        self.head: OnnxHead | None = None
        # preference projects: comparisons scored by EPIG against a sample of those that arrived, with the
        # current version's posterior (``_pair_information``), where the version keeps it
        self._targets = (TargetSample(EPIG_TARGETS, config.seed)
                         if project.preference and config.pair_acquisition == "epig" else None)
        self._information: tuple[str, PairInformation | None] | None = None  # (version, its scorer)
        self.guard: NearDuplicateGuard | None = None  # against items already labeled by people or queued
        self.backlog = Backlog()  # each row's guard similarity is brought up to date when a pick needs it
        self._close_check_at = 0.0  # time.monotonic() of the next look for a close request
        self._close_wait_logged = 0.0
        self._models_seen: set[str] = set()  # versions a models message brought in this process's life
        self._arrivals = 0  # items that reached this selector in this process's life
        self._target_check_at, self._target_state, self._target_logged = 0, False, False
        self._reserving = False  # whether the picks leave the close its reserve (``_reserve``)
        self._certified_once = False  # whether a version has certified a threshold (``_probe_probability``)
        self._misses = 0  # versions in a row since the last that certified one, without a threshold (the same)
        self._withdrawn: set[str] = set()  # versions whose threshold their own audits refuted (then _restore reads)
        self._refute_check_at, self._refute_check_time = 0, 0.0
        self._cut: tuple[str, float] | None = None  # (version, the backlog's threshold): ``_backlog_threshold``
        self._erasures = ErasureWatch(store, project.name, False, config.erasure_check_s)  # then _restore reads
        self._restore()

    # -- state ------------------------------------------------------------------------------
    def _restore(self) -> None:
        name = self.project.name
        current = self.store.current_model(name)
        if current is not None:
            self.head = OnnxHead(Path(current.path))
        self._withdrawn = set(withdrawn_versions(self.store, name))
        certified = [bool(np.isfinite(m.threshold)) for m in self.store.models(name)]  # as each was swapped in
        self._certified_once = any(certified)
        self._misses = certified[::-1].index(True) if self._certified_once else 0
        tasks = [t for t in self.store.tasks(name) if t.kind != "gold"]
        labeled = {label.item_id: label.source for label in self.store.labels(name)}
        tasked = {t.item_id for t in tasks}
        pending = [i for i in self.store.unlabeled_ids(name) if i not in tasked and self._mine(i)]
        self._build_guard(tasks, labeled)  # every shard's: no replica sends people a duplicate of another's
        # undecided items with a vector are the backlog (the others reach the selector through
        # items.scored); a restart does not look at them again, so it draws nothing by itself
        scored = self.store.embedded_ids(name, pending)
        if scored:
            emb = self.store.get_embeddings(name, scored)
            if self._targets is not None:  # after a restart, the sample starts from what waits
                self._targets.add(emb)
            self._add_backlog(scored, emb)
        self._count_budget(len(scored), tasks, labeled)
        # a crash may have fallen between a model swap and its audit look: the restored head looks now
        # (with the same draws: uniforms are keyed by item and version), durable before the first step
        if self._look_at_backlog():
            self.producer.flush()

    def project_changed(self, project: Project) -> None:
        """New settings: a new budget counts the whole stream at the new rate, as a restart would
        (what has arrived earns credit at it, every task drawn spent one); a new strategy picks from now on."""
        old, self.project = self.project, project
        if (old.budget_labels, old.budget_per_items) != (project.budget_labels, project.budget_per_items):
            name = project.name
            self.budget = BudgetController(project.budget_labels, project.budget_per_items)
            self._count_budget(len(self.backlog), [t for t in self.store.tasks(name) if t.kind != "gold"],
                               {label.item_id: label.source for label in self.store.labels(name)})
            self.sampler = StreamSampler(self.budget)
        if old.strategy != project.strategy:
            self.strategy = make_strategy(project.strategy)
        if old.precision_target != project.precision_target:
            self._cut = None  # the backlog's threshold is certified for the target
        if old.classes != project.classes and self.head is None and len(self.backlog):
            # before the first model every item is alike over the classes; the next one scores the new ones
            self.backlog.rescore(*self._scores(self.backlog.emb))

    def group_name(self, project: Project) -> str:
        """One consumer group per replica: each reads every message and keeps its shard's (``_mine``)."""
        return consumer_group(self.name, project.name, self.config.selector_replica, self.config.selector_replicas)

    def _mine(self, item_id: str) -> bool:
        """Whether the item is this replica's to decide (every item, with one replica). A replica owns a
        fixed shard, so no rebalance ever moves an item whose backlog row lives in another's memory."""
        replicas = self.config.selector_replicas
        return replicas == 1 or shard(item_id, replicas) == self.config.selector_replica

    def _count_budget(self, waiting: int, tasks: list[Task], labeled: dict[str, str]) -> None:
        """The budget as the store has it, for this replica's shard: every item that reached it (``waiting``
        in the backlog, queued for people, labeled by the model) earned its credit, every task drawn spent
        one. Each replica earns at the project's rate on its own arrivals, so the replicas together spend
        at that rate too."""
        mine = [t for t in tasks if self._mine(t.item_id)]
        tasked = {t.item_id for t in mine}
        models = sum(1 for i, s in labeled.items() if s == "model" and i not in tasked and self._mine(i))
        self.budget.observe(waiting + len(tasked) + models)
        self.budget.grant(len(mine))

    def _build_guard(self, tasks: list[Task], labeled: dict[str, str]) -> None:
        """The near-duplicate guard, from the store: the items queued for people or labeled by them."""
        tasked = {t.item_id for t in tasks}
        anchors = list(tasked) + [i for i, source in labeled.items() if source == "human" and i not in tasked]
        self.guard = None
        self.backlog.forget_dup()
        if anchors:
            self._guard_add(self.store.get_embeddings(self.project.name, anchors))

    def _forget_erased(self) -> None:
        """Drop erased items from the backlog and rebuild the guard without them (their vectors are
        derived from their text); the backlog's guard similarities are measured again."""
        gone = {item_id for item_id, _ in self._erasures.new()}
        if not gone:
            return
        self.backlog.drop(np.array([i in gone for i in self.backlog.ids], bool))
        if self.head is not None:  # and their vectors from the version's neighbour vote
            self.head.forget(gone)
        name = self.project.name
        self._build_guard([t for t in self.store.tasks(name) if t.kind != "gold"],
                          {label.item_id: label.source for label in self.store.labels(name)})
        log.info("selector forgot project=%s erased=%d backlog=%d", name, len(gone), len(self.backlog))

    def _add_backlog(self, ids: list[str], emb: np.ndarray, scores: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Put items in the backlog; ``scores`` are their ``_scores`` if the caller has them."""
        if not ids:
            return
        probs, unc = scores if scores is not None else self._scores(emb)
        self.backlog.add(ids, emb, probs, unc)

    def _guard_add(self, emb: np.ndarray) -> None:
        """Items people were given join the guard (the backlog is checked against it when it picks)."""
        if self.guard is None:
            self.guard = NearDuplicateGuard(emb.shape[1], self.config.near_duplicate)
        self.guard.add(emb)

    def _guard_similarity(self, rows: np.ndarray) -> np.ndarray:
        """Backlog ``rows``' (int indices) highest cosine to the guard (float32, ``-inf`` before it has
        items), each brought up to date against the guard items added since it was last checked only
        (``Backlog.dup_at``): a row that stays on the shortlist costs what people were given since.
        Rows are checked in at most ``GUARD_GROUPS`` groups (a group from its oldest row's mark on:
        checking a row against items it has seen again changes nothing)."""
        if self.guard is None:
            return np.full(len(rows), -np.inf, np.float32)
        now = len(self.guard)
        at = self.backlog.dup_at[rows]
        stale = rows[at < now]
        if stale.size:
            marks = self.backlog.dup_at[stale]
            edges = np.unique(marks)
            if len(edges) > GUARD_GROUPS:  # the oldest mark of each of GUARD_GROUPS groups of marks
                edges = edges[np.linspace(0, len(edges), GUARD_GROUPS, endpoint=False).astype(np.int64)]
            group = np.searchsorted(edges, marks, side="right") - 1
            for g, since in enumerate(edges.tolist()):
                part = stale[group == g]
                self.backlog.raise_dup(part, self.guard.max_similarity(self.backlog.emb[part], since), now)
        return self.backlog.dup[rows]

    # -- scoring ----------------------------------------------------------------------------
    def _scores(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities [n, C] and uncertainty [n] (all equally uncertain before the first model)."""
        if self.head is None:
            n_classes = len(self.project.classes)
            return np.full((len(emb), n_classes), 1.0 / n_classes), np.ones(len(emb))
        logits = self.head.logits(emb)  # [n, members, C]
        temperature = self.head.meta["temperature"]
        information = self._pair_information()
        return mean_probs(logits, temperature), (information.scores(emb) if information is not None
                                                 else uncertainty(self.config.uncertainty, logits, temperature))

    def _pair_information(self) -> PairInformation | None:
        """A preference project's EPIG scorer for the current version (built at its first use, against the
        arrivals sampled until then, and kept for the version so that its scores compare), or None: not a
        preference project, ``pair_acquisition`` uncertainty, no arrival yet, or a version whose reward has no
        posterior (written before rewards kept it) or cannot be read (logged): then the ``uncertainty`` score."""
        if self._targets is None or self.head is None or not len(self._targets):
            return None
        version = self.head.version
        if self._information is None or self._information[0] != version:
            try:
                fit = load_reward_fit(self.head.folder / REWARD_FOLDER)
            except ModelFileError as e:  # the head itself loaded: score by its members rather than stop
                log.warning("selector cannot read the reward's posterior project=%s version=%s: %s",
                            self.project.name, version, e)
                fit = None
            information = None if fit is None or fit.precision is None else PairInformation(self._targets.vectors, fit)
            self._information = (version, information)
            log.info("selector pair scores project=%s version=%s score=%s targets=%d", self.project.name, version,
                     "epig" if information is not None else self.config.uncertainty, len(self._targets))
        return self._information[1]

    @property
    def score_name(self) -> str:
        """The uncertainty score the selector gives the current version's items: ``epig``, or the name of the
        ``uncertainty`` setting's score."""
        return "epig" if self._pair_information() is not None else self.config.uncertainty

    def _arrival_scores(self, scored: list[Scored], emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities [n, C] and uncertainty [n] of arriving items: those their prelabel worker
        computed (``Scored.probs``, ``Scored.uncertainty``) where it ran this selector's version and
        uncertainty score and they are sound (one finite probability >= 0 per class, summing to 1, a
        finite uncertainty), so that the model and its neighbours' vote run once per item, in the scalable
        stage; the others (a worker a swap behind or ahead, or before any model) scored here from
        ``emb`` [n, D]."""
        n_classes, version, score = len(self.project.classes), self.version, self.score_name
        carried = [k for k, s in enumerate(scored) if version is not None and s.model_version == version
                   and s.uncertainty_score == score and len(s.probs) == n_classes and s.uncertainty is not None]
        probs, unc = np.empty((len(scored), n_classes)), np.empty(len(scored))
        if carried:
            p = np.array([scored[k].probs for k in carried], np.float64)
            u = np.array([scored[k].uncertainty for k in carried], np.float64)
            sound = (np.isfinite(p).all(1) & (p >= 0).all(1) & (np.abs(p.sum(1) - 1.0) < 1e-3)
                     & np.isfinite(u))
            carried = np.asarray(carried)[sound]
            probs[carried], unc[carried] = p[sound], u[sound]
        rest = np.ones(len(scored), bool)
        rest[carried] = False
        if rest.any():
            probs[rest], unc[rest] = self._scores(emb[rest])
        return probs, unc

    @property
    def threshold(self) -> float:
        """The current version's auto-accept threshold (+inf: none certified, or withdrawn)."""
        value = None if self.head is None or self.head.version in self._withdrawn else self.head.meta.get("threshold")
        return float("inf") if value is None else float(value)

    def _refuted(self, force: bool = False) -> bool:
        """Whether the current version's own audits now refute its threshold: the anytime-valid lower
        bound on its wrong auto-accepted labels (:func:`~winnow.core.ml.certify.hidden_errors_lower`)
        puts their precision below the project's target. Then the threshold is withdrawn for good (the
        audit log's ``threshold_withdrawn``): the version labels nothing more, its items wait for the
        next version or the close, and people's checks go where its successor needs evidence. A
        threshold whose labels meet the target is withdrawn with probability at most ``1 -
        confidence_level``, over every look. Read from the store (one grouped read of the version's labels
        and audits) at most once per ``select_batch`` arrivals and ``refute_check_s`` seconds (``force``:
        now), so a large project's steps do not each pay for it."""
        version, threshold = self.version, self.threshold
        if version is None or not np.isfinite(threshold):
            return False
        if not force and (self._arrivals < self._refute_check_at or time.monotonic() < self._refute_check_time):
            return False
        self._refute_check_at = self._arrivals + self.config.select_batch
        self._refute_check_time = time.monotonic() + self.refute_check_s
        name = self.project.name
        trials = family_trials(*self.store.audit_record(name, version), (AUTO,))
        labels = int((~trials.drawn).sum())
        if not labels:
            return False
        wrong = hidden_errors_lower(trials, self.config.train.confidence_level)
        upper = 1.0 - wrong / labels
        if upper >= self.project.precision_target:
            return False
        self._withdrawn.add(version)
        detail = {"version": version, "threshold": threshold, "labels": labels, "audits": int(trials.drawn.sum()),
                  "errors_seen": int(np.nansum(trials.error[trials.drawn])), "errors_lower": wrong,
                  "precision_upper": upper, "target": self.project.precision_target}
        self.store.audit(name, "selector", "threshold_withdrawn", json.dumps(detail), self.clock())
        log.warning("selector withdrew a refuted threshold project=%s %s", name, detail)
        return True

    @property
    def candidate(self) -> float:
        """Where the current model's estimated precision meets the target (not certified yet)."""
        value = None if self.head is None else self.head.meta.get("candidate_threshold")
        return float("inf") if value is None else float(value)

    @property
    def probe_floor(self) -> float:
        """The confidence probes start at: ``probe_start`` of the way from the candidate to 1 (+inf: no candidate)."""
        candidate = self.candidate
        return candidate + (1.0 - candidate) * self.config.probe_start if np.isfinite(candidate) else candidate

    @property
    def reachable(self) -> bool:
        """Whether the current model may yet meet the precision target (``ThresholdChoice.reachable``):
        False once its checks put every region of its confidence plausibly below it."""
        return self.head is None or bool(self.head.meta.get("threshold_choice", {}).get("reachable", True))

    @property
    def version(self) -> str | None:
        return None if self.head is None else self.head.version

    def _label_key(self, item_id: str) -> str:
        return f"{item_id}:selector:{self.version or 'none'}"

    # -- looks ------------------------------------------------------------------------------
    def _look(self, ids: list[str], emb: np.ndarray, probs: np.ndarray, unc: np.ndarray, look: str,
              arriving: bool, audit: np.ndarray, family: str = AUTO,
              probability: np.ndarray | None = None, final: bool = False,
              keep: int = 0, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decide ``ids`` at one look: each gets its probability of a person, then the draw. Drawn
        items become tasks (audit tasks where ``audit`` [n] says the model would label them); undrawn
        audit items get the model's label in ``family``. Returns the bool masks [n] of the items drawn
        and of those decided (drawn or labeled); the others stay for a later look: those the model cannot label, and audit items whose turn
        found no credit for a check (an unchecked label is never given during the stream; only the
        ``final`` look of the close labels what it cannot check, with probability 0).

        ``probability`` [n] overrides the look's probabilities: by default the audit probability
        where the model would label the item, the probe probability where it nearly would (above its
        candidate threshold, from :attr:`probe_floor` on: ``certify_probability`` or, near a certificate,
        ``near_certify_probability``, or once an earlier version certified one, ``recertify_probability``
        where set (:meth:`_probe_probability`; at least the audit probability) while the current version
        has no threshold, then the audit probability), the minimum elsewhere. While a model has neither
        threshold nor candidate, every item is a probe, unless its checks rule the target out for it
        (``reachable``): then none is, until a model that may meet the target."""
        confidence = probs.max(1)
        # probes: people check the items the model would label were its threshold lower (above its
        # candidate), where the next threshold's evidence is needed; every item while no candidate and
        # no threshold exist (the uniform sample the first candidate is found on), unless that sample
        # already rules the target out for this model. Until a threshold is certified they are drawn
        # at ``certify_probability``: the first certificate comes sooner
        certified = np.isfinite(self.threshold)
        region = (confidence >= self.probe_floor if np.isfinite(self.candidate)
                  else np.full(len(ids), not certified and self.reachable))
        probe = ~audit & region
        if probability is None:  # the items people need most come from the backlog (``_pick``)
            audit_p = self.config.audit_probability  # never less before a certificate than after it
            check = audit_p if certified else max(audit_p, self._probe_probability())
            probability = np.where(audit, self.config.audit_probability,
                                   np.where(probe, check, self.config.min_probability))
            if arriving:
                probability = self._capped(probability)
        u = uniforms(self.config.seed, self.project.name, ids, look)
        # preference projects: the expected outcome for response A (1 A, 0 B, 1/2 a tie)
        expected = probs[:, 0] + probs[:, 2] / 2 if self.project.preference else None
        if arriving and self.evaluation is not None:
            # the evaluation budget's draws, where the reward is least sure; scaled up for the items the base
            # draw already sends, so that its rate is spent
            rate = self.config.evaluation_budget / 100 * len(ids) / max(float(np.mean(1.0 - probability)), 1e-9)
            extra = evaluation_probabilities(np.clip(expected, 0.0, 1.0), min(rate, len(ids)))
            draws = draw_with_extra(self.sampler, self.evaluation, probability, extra, u,
                                    uniforms(self.config.seed, self.project.name, ids, f"{look}:evaluation"))
        else:
            draws = self.sampler.draw(probability, u, arriving, keep)
        if arriving and self.project.preference:  # model evaluation's sample (``winnow.core.loop.evaluation``)
            self.store.record_draws(self.project.name, [
                ArrivalDraw(i, float(p), bool(d), float(np.clip(e, 0.0, 1.0)))
                for i, p, d, e in zip(ids, draws.probability, draws.drawn, expected)])
        drawn = np.flatnonzero(draws.drawn)
        if drawn.size:
            now = self.clock()
            predicted = probs.argmax(1)
            # a probe with no model to check its answer against asks two people (where the project
            # allows more than one): its answer will certify thresholds, and a slip there poisons them
            first = 2 if self.head is None and self.project.overlap >= 2 else 1
            self._queue([Task(self.project.name, ids[k], float(unc[k]), self.version, now,
                              "audit" if audit[k] else "holdout" if probe[k] else "label", float(draws.probability[k]),
                              self.project.classes[predicted[k]] if self.head is not None else None,
                              family if audit[k] else None, first if probe[k] else 1) for k in drawn])
            self._guard_add(emb[drawn])
        keep = audit & ~draws.drawn & (draws.funded | final)
        self._accept([ids[k] for k in np.flatnonzero(keep)], probs[keep], family, draws.probability[keep],
                     threshold)
        return draws.drawn, draws.drawn | keep

    def _probe_probability(self) -> float:
        """A probe's chance while the current version has no threshold. Before the project's first
        certificate: ``near_certify_probability`` while the current model's candidate is near one
        (``ThresholdChoice.to_certify`` at most :func:`rule_out_items` more right checks: the sprint costs
        labels only where a certificate is in sight), else ``certify_probability``; a sprint never slows the
        probes: an operator's ``certify_probability`` above it stands throughout. After it,
        ``recertify_probability`` (when set): every check stays in the evidence each later version's
        threshold is chosen on, so a version that misses a threshold lacks little of it, and sprinting again
        for it took the labels of hundreds of picks (LoopConfig's docstring). Until ``recertify_patience``
        versions in a row have missed one: then the sprint comes back, since probes at the audit rate alone
        may never gather the evidence a lost threshold needs."""
        patience = self.config.recertify_patience
        if (self._certified_once and self.config.recertify_probability is not None
                and (patience is None or self._misses < patience)):
            return self.config.recertify_probability
        near, base = self.config.near_certify_probability, self.config.certify_probability
        if near is None or self.head is None:
            return base
        to_certify = (self.head.meta.get("threshold_choice") or {}).get("to_certify")
        within = rule_out_items(self.project.precision_target, self.config.train.confidence_level)
        return max(near, base) if to_certify is not None and to_certify <= within else base

    def _capped(self, probability: np.ndarray) -> np.ndarray:
        """An arrival look's chances [n], scaled down together where they would spend more than
        ``check_share`` of the credit the arriving items earn (the rest is the picks'). The scale depends
        on the look's items only, never on a draw, so every chance is still set before its draw."""
        share = self.config.check_share
        if share is None or not len(probability):
            return probability
        cap = share * len(probability) * self.budget.labels / self.budget.per_items
        spend = float(probability.sum())
        return probability * (cap / spend) if spend > cap else probability

    def _backlog_threshold(self, again: bool = False) -> float:
        """The threshold the current version labels the backlog with: its own (``backlog_threshold``
        ``arrival``), or (``mix``) its own raised where its checks, weighed to the mix of confidence of the
        backlog above it, do not certify the backlog's share there
        (:func:`~winnow.core.ml.autoaccept.threshold_for_mix`; +inf where they certify none of it). The
        threshold is certified on checks of arrivals, and the backlog is the items earlier versions were
        unsure of: lifted over a new version's threshold, they crowd just above it, where labels are least
        often right. Worked out once per version, on the backlog it re-scored (``again``: now, for the close);
        a version written without its checks labels the backlog at its own threshold, one whose checks
        cannot be read labels none of it (logged)."""
        threshold, version = self.threshold, self.version
        if version is None or not np.isfinite(threshold) or self.config.backlog_threshold == "arrival":
            return threshold
        if self._cut is not None and self._cut[0] == version and not again:
            return self._cut[1]
        try:
            checks = Checks.load(self.head.folder)
        except ModelFileError as e:  # the version's own threshold might label a backlog its checks would not
            log.error("selector cannot read the checks; the backlog waits project=%s version=%s: %s",
                      self.project.name, version, e)
            self._cut = (version, float("inf"))
            return float("inf")
        cut = threshold
        if checks is not None and len(self.backlog):
            train = self.config.train
            choice = threshold_for_mix(checks.confidence, checks.correct, self.backlog.conf, threshold,
                                       self.project.precision_target, train.confidence_level, train.min_support,
                                       checks.weights)
            cut = max(threshold, choice.threshold)
            log.info("selector backlog threshold project=%s version=%s threshold=%.4f backlog_threshold=%s "
                     "backlog_above=%d", self.project.name, version, threshold, f"{cut:.4f}",
                     int((self.backlog.conf >= threshold).sum()))
        self._cut = (version, cut)
        return cut

    def _look_at_backlog(self) -> int:
        """The audit look at the backlog items the current head labels above its backlog threshold
        (:meth:`_backlog_threshold`), as far as
        the credit beyond the close's reserve (:meth:`_reserve`) funds their checks (most confident first;
        the rest wait for the next call); returns how many were decided (they leave the backlog)."""
        reserve = self._reserve()
        if not len(self.backlog) or self.head is None or self.budget.whole - reserve < 1 \
                or not np.isfinite(self.threshold):
            return 0
        confidence = self.backlog.conf
        cut = self._backlog_threshold()
        rows = np.flatnonzero(confidence >= cut)
        if not rows.size:
            return 0
        rows = rows[np.argsort(-confidence[rows], kind="stable")]
        _, decided = self._look(self.backlog.id_at(rows), self.backlog.emb[rows], self.backlog.probs[rows],
                                self.backlog.unc[rows], f"swap:{self.version}", arriving=False,
                                audit=np.ones(len(rows), bool), keep=reserve, threshold=cut)
        gone = np.zeros(len(self.backlog), bool)
        gone[rows[decided]] = True
        self.backlog.drop(gone)
        return int(decided.sum())

    def _pick(self) -> int:
        """Send the most useful backlog items to people (the project's strategy over the whole
        backlog under the current model: uncertainty and diversity, near-duplicates of items people
        have left out), once a batch's worth of credit is there. A pick is certain given the backlog
        (probability 1, recorded); returns how many were picked.

        A strategy that picks from a shortlist (``Strategy.shortlist``: cluster-margin clusters ``10 n``
        candidates into ``n``, which costs ``n**2``) picks much credit in rounds of ``select_batch``
        (:func:`pick_rounds`) from the shortlist of the whole credit, each round from the most uncertain
        rows the rounds before it left that duplicate none of their picks: a selector that fell behind,
        or a large batch of arrivals, costs in proportion to what it picks. A strategy that reads every
        row (k-center, BADGE) picks at once. The picks leave the close its reserve (:meth:`_reserve`)."""
        if not len(self.backlog):
            return 0
        wanted = self.budget.whole - self._reserve()  # the close's share stays
        if wanted < self.config.select_batch or self._target_met():
            return 0
        pool, similarity = self._pool(wanted)
        if not len(pool):
            return 0
        emb = self.backlog.emb[pool]
        probs, unc = self.backlog.probs[pool], self.backlog.unc[pool]
        if self.strategy.shortlist(wanted) is None:
            # what people have (labeled or queued) is k-center's anchors: its similarity comes from the guard
            chosen = self.strategy.select(Candidates(emb, probs, unc, anchor_similarity=similarity),
                                          min(wanted, len(pool)), self.rng)  # indices into pool
        else:
            chosen = self._pick_rounds(emb, probs, unc, similarity, wanted)
        self.budget.grant(len(chosen))
        picked = pool[chosen]
        now = self.clock()
        ids = self.backlog.id_at(picked)
        predicted = probs[chosen].argmax(1)
        self._queue([Task(self.project.name, item_id, float(u), self.version, now, "label", 1.0,
                          self.project.classes[k] if self.head is not None else None, None, 1)
                     for item_id, u, k in zip(ids, unc[chosen], predicted)])
        picked_mask = np.zeros(len(self.backlog), bool)
        picked_mask[picked] = True
        self.backlog.drop(picked_mask)
        self._guard_add(emb[chosen])
        return len(chosen)

    def _reserve(self) -> int:
        """Credit the picks leave for the close's checks (:meth:`close_stream`): ``close_reserve`` of all
        the credit earned, once the race for a first certificate is over (a version certified a threshold,
        or its checks ruled the target out for it). Before that every label goes to the evidence and the
        learning the first certificate needs (held from the start, the reserve put it off from 0.32 to
        0.39 of the stream on Banking77, 3 seeds)."""
        if not self._reserving and self.head is not None and (np.isfinite(self.threshold) or not self.reachable):
            self._reserving = True
        return self.budget.earned(self.config.close_reserve) if self._reserving else 0

    def _pick_rounds(self, emb: np.ndarray, probs: np.ndarray, unc: np.ndarray, similarity: np.ndarray,
                     wanted: int) -> np.ndarray:
        """``_pick``'s rounds over a shortlisting strategy's pool (rows ``[m]``); indices into it, at most
        ``wanted``, in pick order."""
        left = np.arange(len(emb))  # pool rows no round picked, none a duplicate of a pick
        chosen: list[np.ndarray] = []
        for n in pick_rounds(wanted, self.config.select_batch):
            if not len(left):
                break
            need = self.strategy.shortlist(n)
            rows = left if need >= len(left) else left[np.argpartition(-unc[left], need - 1)[:need]]
            rows = np.sort(rows)
            got = rows[self.strategy.select(Candidates(emb[rows], probs[rows], unc[rows],
                                                       anchor_similarity=similarity[rows]),
                                            min(n, len(rows)), self.rng)]
            chosen.append(got)
            left = np.setdiff1d(left, got, assume_unique=True)
            if len(left):  # the next rounds see this round's picks as items people have
                near = max_similarity_to(emb[left], emb[got])
                similarity[left] = np.maximum(similarity[left], near)
                left = left[near < self.config.near_duplicate]
        return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)

    def _pool(self, wanted: int) -> tuple[np.ndarray, np.ndarray]:
        """Backlog rows (ascending) the strategy picks ``wanted`` from, and their highest cosine to the
        guard (float32, -inf before it has items): the rows that duplicate no item of the guard, and of
        them only the most uncertain where the strategy looks at no others (``Strategy.shortlist``):
        then a pick costs what it takes, not what waits. The shortlist grows until it holds enough rows
        that are not duplicates, or the whole backlog."""
        n = len(self.backlog)
        need = self.strategy.shortlist(wanted)
        size = n if need is None else min(n, need)
        while True:
            rows = self.backlog.most_uncertain(size)
            similarity = self._guard_similarity(rows)
            if self.guard is not None:
                fresh = similarity < self.guard.threshold
                rows, similarity = rows[fresh], similarity[fresh]
            if need is None or size >= n or len(rows) >= need:
                return rows, similarity
            size = min(n, 2 * size)

    def _target_met(self) -> bool:
        """Target mode: whether the certified accuracy of every item's final label, counting each item
        without a label or a task as wrong, meets ``target_accuracy`` (then people are asked nothing
        beyond the checks). Re-read from the store at most once per ``select_batch`` arrivals; the first
        time it is met is written to the audit log (``target_met``: items and human labels then)."""
        target = self.config.target_accuracy
        if target is None:
            return False
        if self._arrivals < self._target_check_at:
            return self._target_state
        self._target_check_at = self._arrivals + self.config.select_batch
        name = self.project.name
        items = self.store.count_items(name)
        q = certified_quality(self.store, name)
        undecided = items - q.final_labels - self.store.count_open_tasks(name)
        wrong = q.model.hidden_errors_upper + q.human_error_rate_upper * q.human_labels + max(undecided, 0)
        self._target_state = bool(items) and 1.0 - wrong / items >= target
        if self._target_state and not self._target_logged and not any(
                action == "target_met" for _, _, action, _ in self.store.audit_log(name)):
            self.store.audit(name, "selector", "target_met",
                             json.dumps({"items": items, "human_labels": q.human_labels, "bound": 1.0 - wrong / items}),
                             self.clock())
            log.info("selector target met project=%s items=%d human_labels=%d", name, items, q.human_labels)
        self._target_logged = self._target_logged or self._target_state
        return self._target_state

    def _accept(self, ids: list[str], probs: np.ndarray, aggregation: str, probability: np.ndarray,
                threshold: float | None = None) -> int:
        """Write model labels for the given items (all of them), each with the threshold its look used
        (``threshold``; the version's by default); returns how many were new."""
        if not ids:
            return 0
        version = self.version or "none"
        now = self.clock()
        threshold = self.threshold if threshold is None else threshold
        threshold = threshold if np.isfinite(threshold) else None
        classes = [self.project.classes[k] for k in probs.argmax(1).tolist()]
        labels = [Label(self.project.name, item_id, label, "model", version, confidence, threshold, aggregation,
                        self.project.guideline_version, now, self._label_key(item_id), float(pi))
                  for item_id, label, confidence, pi in zip(ids, classes, probs.max(1).tolist(), probability)]
        # an item this selector labeled before (under any model version) gets its stored label
        # published again: a crash may have cut off that publish
        return write_final_labels(self.producer, self.store, labels, same_stage)

    # -- handling ---------------------------------------------------------------------------
    def step(self, max_messages: int = 512, timeout_s: float = 0.0) -> int:
        """Handle one batch, then serve a pending close request if there is one (checked after every
        batch that moved messages, else every ``CLOSE_CHECK_S``)."""
        self._forget_erased()
        handled = super().step(max_messages, timeout_s)
        if handled or time.monotonic() >= self._close_check_at:
            self._close_check_at = time.monotonic() + CLOSE_CHECK_S
            self.close_if_requested()
        return handled

    def close_if_requested(self) -> dict[str, int] | None:
        """Serve a pending close request once every unlabeled item has reached this selector and the
        current model has learned from every human label (the trainer retrains on a close).

        An item ingested before the request may still be on its way (not prelabeled yet, or its
        scored message not consumed yet): closing before it arrives would leave it without a final
        label, so the close waits; and a close that labeled with a model behind its labels would waste
        them. Returns what ``close_stream`` did, or None when nothing was closed.
        """
        requests = pending_close_requests(self.store, self.project.name)
        if not requests or set(requests) <= self._closed_parts():  # replicas: this one's part is done
            return None
        queued = {t.item_id for t in self.store.open_tasks(self.project.name)}
        waiting = [i for i in self.store.unlabeled_ids(self.project.name)
                   if i not in queued and i not in self.backlog and self._mine(i)]
        behind = model_behind(self.store, self.project.name, self.config, self.version)
        if waiting or behind:
            if time.monotonic() - self._close_wait_logged >= CLOSE_WAIT_LOG_S:
                self._close_wait_logged = time.monotonic()
                log.info("selector close waits project=%s unscored=%d model_behind=%s", self.project.name,
                         len(waiting), behind)
            return None
        return self.close_stream()

    def handle(self, records: list[tuple[str, object]]) -> None:
        scored: list[Scored] = []
        for stage, record in records:
            if stage == "models":
                self._swap(record)
            elif self._mine(record.item_id):  # another replica's shard: that replica decides it
                scored.append(record)
        self._refuted()  # before the arrivals' look: a refuted threshold labels none of them
        if scored:
            self._arrive(scored)
        self._look_at_backlog()  # backlog items above the threshold, as the credit earned now funds
        self._pick()

    def _arrive(self, scored: list[Scored]) -> None:
        # a redelivered message must not put an item in the backlog twice, nor next to its own task,
        # nor earn the budget a second time
        arrived = [s.item_id for s in scored]
        queued = {t.item_id for t in self.store.open_tasks(self.project.name, arrived)}
        unlabeled = self.store.unlabeled_ids(self.project.name, arrived)
        if len(unlabeled) < len(set(arrived)):  # redelivered: a crash may have cut off these labels' publish
            done = set(arrived).difference(unlabeled)
            republish_own(self.producer, self.store, self.project.name, "model",
                          {i: self._label_key(i) for i in done}, same_stage)
        fresh = self._embedded([i for i in unlabeled if i not in queued and i not in self.backlog], scored)
        self._arrivals += len(fresh)
        if fresh:
            self._take(fresh, {s.item_id: s for s in scored})

    def _take(self, fresh: list[str], scored: dict[str, Scored]) -> None:
        """The arrival look at items new to this selector (their ``scored`` messages by id); the
        undecided ones join the backlog."""
        emb = self.store.get_embeddings(self.project.name, fresh)  # [n, D]
        if self._targets is not None:
            self._targets.add(emb)
        probs, unc = self._arrival_scores([scored[i] for i in fresh], emb)
        audit = probs.max(1) >= self.threshold
        _, decided = self._look(fresh, emb, probs, unc, "arrive", arriving=True, audit=audit)
        rest = ~decided
        self._add_backlog([i for i, r in zip(fresh, rest) if r], emb[rest], (probs[rest], unc[rest]))

    def _embedded(self, fresh: list[str], scored: list[Scored]) -> list[str]:
        """The ``fresh`` items that have an embedding; the scored messages of the others are
        dead-lettered (``Stage.reject``) rather than stopping the stage."""
        have = set(self.store.embedded_ids(self.project.name, fresh)) if fresh else set()
        if len(have) < len(fresh):
            missing = set(fresh) - have
            self.reject("items.scored", [s for s in scored if s.item_id in missing],
                        NotFound("item_id", f"no embedding in the store for {len(missing)} scored items"))
        return [i for i in fresh if i in have]

    def _queue(self, tasks: list[Task]) -> None:
        self.store.add_tasks(tasks)
        self.producer.publish_many(topic(self.project.name, "tasks"), TASKS.keyed(tasks))

    def _swap(self, model: ModelVersion) -> None:
        first_sight, self._models_seen = model.version not in self._models_seen, self._models_seen | {model.version}
        if self.head is not None and self.head.version == model.version:
            if first_sight:  # the head came from the store at start: this may be the redelivered message
                # of a swap a crash cut short, after its labels were written and before they were published
                suffix = f":selector:{model.version}"
                republish_stored(self.producer, self.store, self.project.name, "model",
                                 lambda label: label.idempotency_key.endswith(suffix))
            return
        self.head = OnnxHead(Path(model.path))
        certified = bool(np.isfinite(self.threshold))
        self._certified_once = self._certified_once or certified
        self._misses = 0 if certified or not self._certified_once else self._misses + 1
        log.info("selector swapped project=%s version=%s threshold=%s backlog=%d", self.project.name,
                 model.version, self.threshold, len(self.backlog))
        if len(self.backlog):
            self.backlog.rescore(*self._scores(self.backlog.emb))
            self._look_at_backlog()
        open_tasks = self.store.open_tasks(self.project.name)
        label_tasks = [t.item_id for t in open_tasks if t.kind == "label"]
        if label_tasks:
            _, unc = self._scores(self.store.get_embeddings(self.project.name, label_tasks))
            self.store.set_priorities(self.project.name, dict(zip(label_tasks, unc.tolist())))

    def _parts(self) -> list[dict]:
        """The replicas' closes of their shards (the audit log's ``close_part``), oldest first."""
        return [json.loads(d) for _, _, action, d in self.store.audit_log(self.project.name) if action == "close_part"]

    def _closed_parts(self) -> set[str]:
        """The close requests this replica has closed its shard for (none with one replica)."""
        if self.config.selector_replicas == 1:
            return set()
        return {r for part in self._parts() if part["replica"] == self.config.selector_replica for r in part["requests"]}

    def _record_part(self, requests: list[str], tasks: int, low: int, unlabeled: int) -> None:
        """Record that this replica closed its shard for ``requests``; the requests every replica has
        closed for are served, with the counts of each replica's last close. The part is written before
        the others' are read, so of two replicas finishing together the later reader sees both."""
        replicas, name = self.config.selector_replicas, self.project.name
        self.store.audit(name, "selector", "close_part", json.dumps({
            "replica": self.config.selector_replica, "replicas": replicas, "requests": requests, "tasks": tasks,
            "low_confidence": low, "unlabeled": unlabeled}), self.clock())
        covered: dict[int, set[str]] = {}
        last: dict[int, dict] = {}
        for part in self._parts():
            covered.setdefault(part["replica"], set()).update(part["requests"])
            last[part["replica"]] = part
        served = [r for r in requests if all(r in covered.get(k, ()) for k in range(replicas))]
        if served:
            total = {key: sum(last[k][key] for k in range(replicas)) for key in ("tasks", "low_confidence", "unlabeled")}
            record_close(self.store, name, served, total["tasks"], total["low_confidence"], self.clock(),
                         total["unlabeled"])

    def close_stream(self) -> dict[str, int]:
        """The stream has ended: one last look at the backlog with the current model.

        Every backlog item gets a probability of a person from the credit left (the picks leave
        ``close_reserve`` of the budget for it), weighted half uniformly and half by the model's expected
        error on it; the drawn ones become audit tasks, the others get the model's label:
        ``auto_accept`` above the backlog's threshold (:meth:`_backlog_threshold`, worked out on the
        backlog the close labels; items whose check found no credit during the stream), else
        ``aggregation="low_confidence"`` (below any certified threshold; their confidence, the threshold
        and their probability are on the label, and the final-label bound counts them).
        Before any model exists nothing is invented: the items stay unlabeled (``unlabeled`` in the
        outcome and the stream status) and a later close, after people labeled enough, labels them.
        """
        requests = pending_close_requests(self.store, self.project.name)
        tasks = low = unlabeled = 0
        # a close served again after a crash finds the labels it wrote out of the backlog: publish
        # them again, since the crash may have come before their publish (idempotent downstream):
        # every low_confidence label, and the auto-accepted ones of the model the close labels with
        suffix = f":selector:{self.version}"
        republish_stored(self.producer, self.store, self.project.name, "model",
                         lambda label: ":selector:" in label.idempotency_key
                         and (label.aggregation == LOW or label.idempotency_key.endswith(suffix)))
        self._refuted(force=True)
        if len(self.backlog) and self.head is None:
            unlabeled = len(self.backlog)
        elif len(self.backlog):
            n = len(self.backlog)
            probs, ids = self.backlog.probs, self.backlog.ids
            confidence = self.backlog.conf
            credit = 0 if self._target_met() else self.budget.whole  # target mode: nothing more to ask
            # the weight is half uniform (the check of any label bounds the family the model labels: the
            # bound takes hidden errors where chances were least) and half the model's expected error
            # (where a check most often corrects a label)
            expected = 1.0 - confidence
            probability = spread(expected + expected.mean() + 1e-6, float(credit))
            # items above the threshold whose check found no credit during the stream are auto-accepted
            # now (their probability recorded); the others are labeled below any certified threshold
            cut = self._backlog_threshold(again=True)  # on the backlog the close labels
            for family, rows in ((AUTO, np.flatnonzero(confidence >= cut)), (LOW, np.flatnonzero(confidence < cut))):
                if rows.size:
                    drawn, _ = self._look([ids[k] for k in rows], self.backlog.emb[rows], probs[rows],
                                          self.backlog.unc[rows], f"close:{self.version}", arriving=False,
                                          audit=np.ones(rows.size, bool), family=family,
                                          probability=probability[rows], final=True, threshold=cut)
                    tasks += int(drawn.sum())
                    low += int((~drawn).sum()) if family == LOW else 0
            self.backlog.drop(np.ones(n, bool))
        self.producer.flush()
        # the requests are served once the output is durable: a crash before this line means the
        # close runs again after restart (its labels are idempotent, its tasks already queued)
        if self.config.selector_replicas == 1:
            record_close(self.store, self.project.name, requests, tasks, low, self.clock(), unlabeled)
        else:
            self._record_part(requests, tasks, low, unlabeled)
        log.info("selector closed the stream project=%s tasks=%d low_confidence=%d unlabeled=%d requests=%d",
                 self.project.name, tasks, low, unlabeled, len(requests))
        return {"tasks": tasks, "low_confidence": low, "unlabeled": unlabeled}
