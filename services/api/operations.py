"""What the API does, as plain typed methods on core records: ``WinnowApi`` checks the caller's
right (``Principal.require``) and every value against ``winnow.core.domain.limits`` before anything
reaches the store or the bus."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from winnow.core.access.roles import Action, Principal
from winnow.core.access.tokens import TokenInfo, issue, revoke
from winnow.core.domain.audit import AuditRecord, Broken, verify
from winnow.core.domain.errors import InvalidInput, NotFound, PermissionDenied
from winnow.core.domain.limits import (
    MAX_CLASS_NAME_BYTES,
    MAX_HEARTBEAT_IDS,
    MAX_KEY_BYTES,
    MAX_LEASE_TASKS,
    check_count,
    check_items,
    check_keys,
    check_project_name,
    check_string,
    shorten,
)
from winnow.core.domain.codecs import MODELS
from winnow.core.domain.records import Item, Label, Lease, ModelVersion, Project
from winnow.core.domain.settings import LoopConfig
from winnow.core.domain.validation import validate_items, validate_project
from winnow.core.loop.close import StreamStatus, request_close, stream_status
from winnow.core.loop.erase import erase
from winnow.core.loop.evaluation import win_rates
from winnow.core.loop.gold import add_gold
from winnow.core.loop.transfer import export_rows
from winnow.core.loop.ingest import ingest
from winnow.core.loop.labeling import LabelingService
from winnow.core.loop.topics import create_topics, topic
from winnow.core.ports.bus import Bus, ProducerPool
from winnow.core.ports.store import Erasure, Store
from winnow.core.loop.quality import certified_quality
from winnow.services.api.convert import CertifiedQuality, ProjectStats
from winnow.services.metrics import ANSWERS, LEASES, SKIPS


_SETTINGS = ("budget_labels", "budget_per_items", "precision_target", "strategy", "overlap", "guideline_version",
             "guideline")


def _project(name: str) -> str:
    check_project_name(name, "project")  # a name no project can have is refused before any lookup
    return name


class WinnowApi:
    """What the API does, on core records. Each project gets one ``LabelingService``; its submits
    and consensus run under that project's lock (``LabelingService`` keeps the items ready for
    consensus in memory)."""

    def __init__(self, bus: Bus, store: Store, config: LoopConfig, clock: Callable[[], float] = time.time) -> None:
        self.bus, self.store, self.config, self.clock = bus, store, config, clock
        self.producers = ProducerPool(bus)  # one per concurrent call: a flush reports only its own call's sends
        self._labeling: dict[str, tuple[LabelingService, threading.Lock]] = {}
        self._labeling_lock = threading.Lock()

    # -- ingest ---------------------------------------------------------------------------------
    def ingest(self, who: Principal, items: Sequence[Item]) -> int:
        """Validate every item (per project) before writing any; returns how many ids were new."""
        check_items(items)
        by_project: dict[str, list[Item]] = {}
        for item in items:
            by_project.setdefault(item.project, []).append(item)
        for name in by_project:
            who.require(Action.INGEST, name)
        projects = {name: self.store.get_project(name) for name in by_project}
        for name, group in by_project.items():
            validate_items(projects[name], group)
        new = 0
        with self.producers.lease() as producer:
            for name, group in by_project.items():
                added = ingest(producer, self.store, projects[name], group)
                self._audit(who, name, "ingest", {"received": len(group), "new": added}, [i.item_id for i in group])
                new += added
        return new

    # -- labeling -------------------------------------------------------------------------------
    def _labeling_service(self, project: str) -> tuple[LabelingService, threading.Lock]:
        """The project's one labeling service and the lock its submits and consensus run under."""
        with self._labeling_lock:
            if project not in self._labeling:
                service = LabelingService(self.bus, self.store, self.store.get_project(project), self.config,
                                          self.clock, background_refit=True)
                self._labeling[project] = (service, threading.Lock())
            return self._labeling[project]

    def _service(self, who: Principal, project: str, annotator: str) -> tuple[LabelingService, threading.Lock, str]:
        """The project's labeling service, its lock and the annotator the call acts as: the caller's
        identity (a request naming someone else is refused), or the name given on an ``--insecure``
        server."""
        who.require(Action.LABEL, _project(project))
        check_string("annotator", annotator, MAX_KEY_BYTES, required=who.anonymous)
        if not who.anonymous:
            if annotator and annotator != who.name:
                raise PermissionDenied(f"{who.name!r} may not answer as another annotator")
            annotator = who.name
        return (*self._labeling_service(project), annotator)

    def lease(self, who: Principal, project: str, annotator: str, max_tasks: int) -> list[Lease]:
        """Up to ``max_tasks`` (capped at ``max_open_leases``) leases for the caller."""
        if not 1 <= max_tasks <= MAX_LEASE_TASKS:
            raise InvalidInput("max_tasks", f"must be in [1, {MAX_LEASE_TASKS}], got {max_tasks}")
        service, _, annotator = self._service(who, project, annotator)
        leases = service.lease(annotator, max_tasks)
        LEASES.labels(project).inc(len(leases))
        if leases:  # audited before any text leaves
            self._audit(who, project, "lease", {"leases": len(leases), "annotator": annotator},
                        [lease.item_id for lease in leases])
        return leases

    def submit(self, who: Principal, project: str, annotator: str, item_id: str, label: str, strength: str = "",
               reason: str = "") -> tuple[bool, int]:
        """Record the answer to a task the caller holds a live lease on (a comparison's with its
        ``strength`` and ``reason`` when given), then resolve: (answer recorded, final labels made)."""
        check_keys("item_id", [item_id])
        check_string("label", label, MAX_CLASS_NAME_BYTES)
        service, lock, annotator = self._service(who, project, annotator)
        with lock:
            recorded = service.submit(annotator, item_id, label, strength, reason)
            made = service.resolve()
        if recorded:
            ANSWERS.labels(project, annotator).inc()
        self._audit(who, project, "submit", {"recorded": recorded, "annotator": annotator, "final_labels": made},
                    [item_id])
        return recorded, made

    def skip(self, who: Principal, project: str, annotator: str, item_id: str) -> None:
        check_keys("item_id", [item_id])
        service, _, annotator = self._service(who, project, annotator)
        service.skip(annotator, item_id)
        SKIPS.labels(project).inc()
        self._audit(who, project, "skip", {"annotator": annotator}, [item_id])

    def heartbeat(self, who: Principal, project: str, annotator: str, item_ids: Sequence[str]) -> int:
        check_count("item_ids", len(item_ids), MAX_HEARTBEAT_IDS)
        check_keys("item_ids", item_ids)
        service, _, annotator = self._service(who, project, annotator)
        return service.heartbeat(annotator, item_ids)

    def my_quality(self, who: Principal, project: str) -> dict[str, float | None]:
        """The caller's own answers and accuracy on gold (what an annotator may see of their quality)."""
        who.require(Action.LABEL, _project(project))
        return self._labeling_service(project)[0].own_quality(who.name)

    # -- review ---------------------------------------------------------------------------------
    def set_gold(self, who: Principal, project: str, answers: Mapping[str, str]) -> int:
        """Record known answers (reviewers, owners); how many gold items the project has now."""
        who.require(Action.GOLD, _project(project))
        check_count("answers", len(answers), MAX_HEARTBEAT_IDS)
        check_keys("answers", list(answers))
        if not answers:
            raise InvalidInput("answers", "is empty")
        record = self.store.get_project(project)
        with self.producers.lease() as producer:
            gold = add_gold(producer, self.store, record, answers, who.name, self.clock())
            producer.flush()
        self._audit(who, project, "gold", {"answers": len(answers), "gold_items": gold}, list(answers))
        return gold

    def annotator_quality(self, who: Principal, project: str) -> dict[str, dict[str, float | None]]:
        """Per annotator: answers, accuracy on gold, the Dawid-Skene estimate."""
        who.require(Action.QUALITY, _project(project))
        return self._labeling_service(project)[0].annotator_quality()  # reads only: submits need not wait

    def disagreements(self, who: Principal, project: str, limit: int
                      ) -> list[tuple[str, dict[str, str], str | None, str | None]]:
        """Items whose answers disagree with each other, or with a confident model (the model's label on
        an audit or holdout task), oldest first: (item, annotator -> answer, final label, the confident
        model's label or None); audited."""
        who.require(Action.QUALITY, _project(project))
        if not 0 <= limit <= MAX_LEASE_TASKS:
            raise InvalidInput("limit", f"must be in [0, {MAX_LEASE_TASKS}], got {limit}")
        by_item: dict[str, dict[str, str]] = {}
        for a in self.store.annotations(project):
            by_item.setdefault(a.item_id, {})[a.annotator] = a.label
        confident = {t.item_id: t.model_label for t in self.store.tasks(project, ("audit", "holdout"))
                     if t.model_label is not None}
        split = [(i, answers) for i, answers in by_item.items()
                 if len(set(answers.values())) > 1 or (i in confident and set(answers.values()) != {confident[i]})]
        split = split[:limit or 100]
        finals = {label.item_id: label.label for label in self.store.labels(project)} if split else {}
        found = [(i, answers, finals.get(i), confident.get(i)) for i, answers in split]
        self._audit(who, project, "disagreements", {"items": len(found)}, [i for i, *_ in found])
        return found

    def gold_items(self, who: Principal, project: str, limit: int) -> tuple[list[dict[str, object]], int]:
        """The gold set (reviewers): per gold item its text, known answer, people's answers and how
        many matched it, least matched first (then by id), at most ``limit`` (0: 100); and how many
        gold items there are. Audited (it reveals labels)."""
        who.require(Action.QUALITY, _project(project))
        if not 0 <= limit <= MAX_LEASE_TASKS:
            raise InvalidInput("limit", f"must be in [0, {MAX_LEASE_TASKS}], got {limit}")
        gold = self.store.gold(project)
        answers: Counter[str] = Counter()
        matched: Counter[str] = Counter()
        for a in self.store.annotations(project, list(gold)) if gold else []:
            answers[a.item_id] += 1
            matched[a.item_id] += a.label == gold[a.item_id]
        ordered = sorted(gold, key=lambda i: (matched[i] / answers[i] if answers[i] else 1.0, -answers[i], i))
        chosen = ordered[: limit or 100]
        texts = {item.item_id: item.text for item in self.store.find_items(project, chosen)}
        found = [{"item_id": i, "text": texts.get(i, ""), "label": gold[i], "answers": answers[i],
                  "matched": matched[i]} for i in chosen]
        self._audit(who, project, "gold_read", {"items": len(found)}, chosen)
        return found, len(gold)

    # -- projects -------------------------------------------------------------------------------
    def create_project(self, who: Principal, project: Project) -> Project:
        """Create the project (the admin only): its topics first, then its row, so a bus that refuses
        a topic leaves nothing behind. An existing project with the same settings is returned as it is."""
        who.require(Action.CREATE_PROJECT, None)
        validate_project(project)  # with the limits and the one name rule, before any topic exists
        try:
            existing = self.store.get_project(project.name)
        except NotFound:
            create_topics(self.bus, project.name, self.config.partitions)
            self.store.create_project(project)
            self._audit(who, project.name, "project_create", dataclasses.asdict(project), [project.name])
            existing = project
        if dataclasses.replace(existing, created_at=project.created_at) != project:
            raise InvalidInput("name", f"a project named {shorten(project.name)} exists with other settings")
        create_topics(self.bus, project.name, self.config.partitions)  # idempotent
        return existing

    def projects(self, who: Principal) -> list[Project]:
        """The projects the caller belongs to (all of them for the admin), by name."""
        if who.project is not None:
            try:
                return [self.store.get_project(who.project)]
            except NotFound:
                return []
        return self.store.list_projects()

    def project(self, who: Principal, project: str, action: Action = Action.STATS) -> Project:
        """One project's settings, for a caller allowed ``action`` on it (reading its stats by default;
        the labeling page asks as a labeler, the reviewer page as a reviewer)."""
        who.require(action, _project(project))
        return self.store.get_project(project)

    def update_project(self, who: Principal, project: str, changes: Mapping[str, object]) -> Project:
        """Change a project's settings (owners), and add classes (``add_classes``: appended to the
        schema; people can answer them at once, the model predicts them from its next version);
        audited; the workers take them within seconds."""
        who.require(Action.SETTINGS, _project(project))
        unknown = sorted(set(changes) - set(_SETTINGS) - {"add_classes"})
        if unknown:
            raise InvalidInput(unknown[0], "is not a setting that can change")
        current = self.store.get_project(project)
        changes = dict(changes)
        if added := tuple(changes.pop("add_classes", ())):
            if again := [c for c in added if c in current.classes]:
                raise InvalidInput("add_classes", f"{again[0]!r} is already a class of project {project!r}")
            changes["classes"] = current.classes + added
        updated = self.store.update_project(dataclasses.replace(current, **changes), who.name, self.clock())
        with self._labeling_lock:
            if project in self._labeling:  # this process's labeling service takes them at once
                self._labeling[project][0].project = updated
        return updated

    def stats(self, who: Principal, project: str) -> ProjectStats:
        who.require(Action.STATS, _project(project))
        items = self.store.count_items(project)
        by_source = Counter(self.store.count_labels(project))
        current = self.store.current_model(project)
        quality = certified_quality(self.store, project)
        # a threshold the selector withdrew (its audits refuted it) is in force no more
        in_force = current is not None and current.version not in quality.thresholds_withdrawn
        return ProjectStats(project, items, dict(by_source), by_source["human"] / items if items else 0.0,
                            self.store.count_open_tasks(project), None if current is None else current.version,
                            current.threshold if in_force else None, stream_status(self.store, project),
                            CertifiedQuality.of(quality), tuple(win_rates(self.store, project)))

    def close_stream(self, who: Principal, project: str) -> StreamStatus:
        """Ask the selector to close the stream (idempotent while a close is pending); audited."""
        who.require(Action.CLOSE, _project(project))
        return request_close(self.store, project, who.name, self.clock())

    def erase(self, who: Principal, project: str, item_ids: Sequence[str]) -> Erasure:
        """Erase items from the store and the bus (owners); see :mod:`winnow.core.loop.erase`."""
        who.require(Action.ERASE, _project(project))
        return erase(self.bus, self.store, project, item_ids, who.name, self.clock())

    def export_rows(self, who: Principal, project: str) -> list[dict]:
        """Every final label with its text, provenance and answers (``core.data.formats.rows``); audited."""
        who.require(Action.EXPORT, _project(project))
        return export_rows(self.store, project, who.name, self.clock())

    def export_labels(self, who: Principal, project: str) -> list[Label]:
        """Every final label, oldest first; the export is in the audit log before anything is sent."""
        who.require(Action.EXPORT, _project(project))
        labels = self.store.labels(project)
        self._audit(who, project, "export_labels", f"{len(labels)} labels")
        return labels

    # -- models ---------------------------------------------------------------------------------
    def versions(self, who: Principal, project: str) -> tuple[list[ModelVersion], str | None]:
        """The project's versions, oldest first, and the current one."""
        who.require(Action.VERSIONS, _project(project))
        current = self.store.current_model(project)
        return self.store.models(project), None if current is None else current.version

    def promote(self, who: Principal, project: str, version: str) -> ModelVersion:
        """Make ``version`` current and publish it on the models topic (workers swap to it)."""
        who.require(Action.PROMOTE, _project(project))
        check_keys("version", [version])
        model = self.store.promote(project, version)
        with self.producers.lease() as producer:
            producer.publish_many(topic(project, "models"), MODELS.keyed([model]))
            producer.flush()
        self._audit(who, project, "promote", version, [version])
        return model

    def audit_trail(self, who: Principal, project: str | None, after: int, limit: int | None) -> list[AuditRecord]:
        """The project's audit chain (the global one for None: the admin only), from record ``after`` on."""
        who.require(Action.AUDIT, None if project is None else _project(project))
        if after < 0 or (limit is not None and limit < 0):
            raise InvalidInput("after" if after < 0 else "limit", "must not be negative")
        return self.store.audit_trail(project, after, limit or None)

    def verify_audit(self, who: Principal, project: str | None) -> tuple[list[Broken], dict[str, str], int]:
        """Check the chain's hashes: (broken records, head hash by chain, records checked)."""
        records = self.audit_trail(who, project, 0, None)
        return (*verify(records), len(records))

    def _audit(self, who: Principal, project: str | None, action: str, detail: str | dict,
               objects: Sequence[str] = ()) -> None:
        """An audit record of the caller's action (its name as the actor, its token and role in the detail)."""
        if isinstance(detail, dict):
            detail = json.dumps({**detail, "role": who.role, "token": who.token_id}, sort_keys=True)
        self.store.audit(project, who.name, action, detail, self.clock(), objects)

    # -- access ---------------------------------------------------------------------------------
    def create_token(self, who: Principal, project: str | None, role: str, name: str,
                     expires_in_s: float | None) -> tuple[str, TokenInfo]:
        """A new token (shown once) for ``role`` on ``project``: owners for their project, the
        admin for any project or a new admin."""
        who.require(Action.TOKENS, None if project is None else _project(project))
        token, info = issue(self.store, who.name, role, project, name or None, self.clock(), expires_in_s)
        return token, info

    def tokens(self, who: Principal, project: str | None) -> list[TokenInfo]:
        """The project's tokens (every token for the admin when ``project`` is None)."""
        who.require(Action.TOKENS, None if project is None else _project(project))
        return self.store.tokens(project)

    def revoke_token(self, who: Principal, token_id: str) -> TokenInfo:
        """Revoke a token of a project the caller owns (any token for the admin). A token of another
        project reads as unknown."""
        who.require(Action.TOKENS, who.project)  # a caller who manages no tokens is refused outright
        check_keys("token_id", [token_id])
        info = self.store.token(token_id)
        if not who.can(Action.TOKENS, info.project):
            raise NotFound("token_id", f"no token {token_id[:100]!r}")
        return revoke(self.store, who.name, token_id, self.clock())
