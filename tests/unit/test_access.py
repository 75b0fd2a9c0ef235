"""Identity and roles at the gRPC edge: every RPC x every role x own project / other project / no
credential gets the expected status, and no refusal tells another project's data or existence."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import message_factory
from winnow.core.access.roles import ROLES
from winnow.core.access.tokens import TokenInfo, issue, mint
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.errors import LeaseRequired, PermissionDenied, Unauthenticated
from winnow.core.domain.records import Item, Project, Task
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.topics import create_topics
from winnow.services.api.auth import Authenticator
from winnow.services.api.server import create_server
from winnow.services.api.servicers import SERVICES
from winnow.services.client import WinnowClient, channel
from winnow.v1 import (
    access_pb2,
    ingest_pb2,
    labeling_pb2,
    models_pb2,
    projects_pb2,
    records_pb2,
    review_pb2,
)

CLASSES = ("pos", "neg")
OWN, OTHER, NOWHERE = "alpha", "beta", "gamma"  # gamma does not exist
OK, DENIED, NO_ONE = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED
# what each role may do, written out from the issue (not read from the code under test)
ALLOWED = {
    "admin": {"create_project", "ingest", "close", "label", "stats", "export", "versions", "promote", "tokens",
              "audit", "erase", "gold", "quality", "settings"},
    "owner": {"ingest", "close", "label", "stats", "export", "versions", "promote", "tokens", "audit", "erase",
              "gold", "quality", "settings"},
    "producer": {"ingest", "close", "stats"},
    "annotator": {"label"},
    "reviewer": {"stats", "export", "versions", "gold", "quality"},
    "viewer": {"stats", "export", "versions"},
}


@dataclass
class World:
    store: SqliteStore
    target: str
    tokens: dict[str, str]  # role -> token of that role on OWN (the admin's is global)
    seq: Iterator[int]

    def token_id(self, project: str) -> str:
        """A fresh throwaway token of ``project`` (what RevokeToken revokes)."""
        return issue(self.store, "test", "viewer", project, None, time.time())[1].token_id


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("access")
    bus, store = SqliteBus(folder / "bus.sqlite"), SqliteStore(folder / "store.sqlite")
    server, port = create_server(bus, store, Authenticator(store), config=LoopConfig(max_open_leases=3))
    server.start()
    for name in (OWN, OTHER):
        store.create_project(Project(name, CLASSES))
        create_topics(bus, name, 1)
        store.add_items([Item(name, "seed", "the seed item", 1.0)])
        store.add_tasks([Task(name, "seed", 1.0, None, 1.0)])
        store.add_items([Item(name, "unleased", "an item no one may lease", 1.0)])
    tokens = {role: issue(store, "test", role, None if role == "admin" else OWN, role, time.time())[0]
              for role in ROLES}
    try:
        yield World(store, f"127.0.0.1:{port}", tokens, itertools.count())
    finally:
        server.stop(1.0).wait()
        bus.close()
        store.close()


# RPC -> (the right it needs, a valid request on project p); every RPC of every service has a row
def _requests(world: World) -> dict[str, tuple[str | None, Callable[[str], object]]]:
    def item(p: str) -> records_pb2.Item:
        return records_pb2.Item(project=p, item_id=f"new-{next(world.seq)}", text="a new item")

    return {
        "Ingest/Ingest": ("ingest", lambda p: iter([item(p)])),
        "Ingest/IngestBatch": ("ingest", lambda p: ingest_pb2.ItemBatch(items=[item(p)])),
        "Labeling/LeaseTasks": ("label", lambda p: labeling_pb2.LeaseTasksRequest(project=p, max_tasks=1)),
        "Labeling/SubmitLabel": ("label", lambda p: labeling_pb2.SubmitLabelRequest(project=p, item_id="unleased",
                                                                                   label="pos")),
        "Labeling/Skip": ("label", lambda p: labeling_pb2.SkipRequest(project=p, item_id="unleased")),
        "Labeling/Heartbeat": ("label", lambda p: labeling_pb2.HeartbeatRequest(project=p, item_ids=["seed"])),
        "Projects/CreateProject": ("create_project", lambda p: projects_pb2.CreateProjectRequest(name=p,
                                                                                                  classes=CLASSES)),
        "Projects/GetStats": ("stats", lambda p: projects_pb2.GetStatsRequest(project=p)),
        "Projects/GetProject": ("stats", lambda p: projects_pb2.GetProjectRequest(project=p)),
        "Projects/UpdateProject": ("settings", lambda p: projects_pb2.UpdateProjectRequest(project=p,
                                                                                          guideline_version="v1")),
        "Projects/ListProjects": (None, lambda p: projects_pb2.ListProjectsRequest()),
        "Projects/ExportLabels": ("export", lambda p: projects_pb2.ExportLabelsRequest(project=p)),
        "Projects/ExportRows": ("export", lambda p: projects_pb2.ExportLabelsRequest(project=p)),
        "Projects/CloseStream": ("close", lambda p: projects_pb2.CloseStreamRequest(project=p)),
        "Projects/EraseItems": ("erase", lambda p: projects_pb2.EraseItemsRequest(project=p, item_ids=["gone"])),
        "Models/ListVersions": ("versions", lambda p: models_pb2.ListVersionsRequest(project=p)),
        "Models/Promote": ("promote", lambda p: models_pb2.PromoteRequest(project=p, version="v-none")),
        "Access/WhoAmI": (None, lambda p: access_pb2.WhoAmIRequest()),
        "Review/SetGold": ("gold", lambda p: review_pb2.SetGoldRequest(project=p, answers={"seed": "pos"})),
        "Review/AnnotatorQuality": ("quality", lambda p: review_pb2.AnnotatorQualityRequest(project=p)),
        "Review/Disagreements": ("quality", lambda p: review_pb2.DisagreementsRequest(project=p)),
        "Review/GoldItems": ("quality", lambda p: review_pb2.GoldItemsRequest(project=p)),
        "Access/CreateToken": ("tokens", lambda p: access_pb2.CreateTokenRequest(project=p, role="viewer")),
        "Access/ListTokens": ("tokens", lambda p: access_pb2.ListTokensRequest(project=p)),
        "Access/RevokeToken": ("tokens", lambda p: access_pb2.RevokeTokenRequest(
            token_id=world.token_id(p) if p != NOWHERE else "0" * 12)),
        "Access/ReadAudit": ("audit", lambda p: access_pb2.ReadAuditRequest(project=p)),
        "Access/VerifyAudit": ("audit", lambda p: access_pb2.VerifyAuditRequest(project=p)),
    }


# what an allowed call answers (the requests above are valid, but some are refused for what they ask)
_ALLOWED_CODE = {"Labeling/SubmitLabel": grpc.StatusCode.FAILED_PRECONDITION,  # no lease held
                 "Projects/EraseItems": grpc.StatusCode.NOT_FOUND,  # no item "gone"
                 "Labeling/Skip": grpc.StatusCode.FAILED_PRECONDITION,
                 "Models/Promote": grpc.StatusCode.NOT_FOUND}  # no such version


def _call(target: str, token: str | None, rpc: str, request: object) -> tuple[grpc.StatusCode, str, object]:
    service, method = rpc.split("/")
    descriptor = SERVICES[service][1].methods_by_name[method]
    response_cls = message_factory.GetMessageClass(descriptor.output_type)
    with channel(target, token) as ch:
        path = f"/winnow.v1.{service}/{method}"
        kind = {(False, False): ch.unary_unary, (True, False): ch.stream_unary,
                (False, True): ch.unary_stream}[(descriptor.client_streaming, descriptor.server_streaming)]
        call = kind(path, request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=response_cls.FromString)
        try:
            response = call(request, timeout=10)
            if descriptor.server_streaming:
                response = list(response)
            return OK, "", response
        except grpc.RpcError as error:
            return error.code(), error.details(), None


def test_every_rpc_has_a_row(world: World) -> None:
    every = {f"{name}/{m.name}" for name, (_, d) in SERVICES.items() for m in d.methods}
    assert set(_requests(world)) == every


@pytest.mark.parametrize("rpc", sorted(_requests(World(None, "", {}, itertools.count()))))  # type: ignore[arg-type]
def test_every_rpc_every_role_own_other_and_none(world: World, rpc: str) -> None:
    right, request = _requests(world)[rpc]
    code, details, _ = _call(world.target, None, rpc, request(OWN))
    assert code == NO_ONE, (rpc, "no credential", code)
    code, details, _ = _call(world.target, "wn_000000000000_" + "A" * 43, rpc, request(OWN))
    assert (code, details) == (NO_ONE, "the token is unknown, expired or revoked")
    for role, token in world.tokens.items():
        allowed = right is None or right in ALLOWED[role]
        expected = _ALLOWED_CODE.get(rpc, OK) if allowed else DENIED
        if rpc == "Projects/CreateProject" and allowed:  # the project exists with these settings: returned as is
            expected = OK
        code, details, _ = _call(world.target, token, rpc, request(OWN))
        assert code == expected, (rpc, role, "own", code, details)
        other_code, other_details, response = _call(world.target, token, rpc, request(OTHER))
        nowhere_code, nowhere_details, _ = _call(world.target, token, rpc, request(NOWHERE))
        if role == "admin" or right is None:
            continue  # the admin may see every project; WhoAmI names no project
        if rpc == "Access/RevokeToken" and allowed:  # an owner revoking another project's token: unknown to it
            assert (other_code, nowhere_code) == (grpc.StatusCode.NOT_FOUND,) * 2, (rpc, role)
            assert other_details.replace(request_id(other_details), "") == \
                nowhere_details.replace(request_id(nowhere_details), "")
            continue
        assert other_code == DENIED, (rpc, role, "other", other_code, other_details)
        # the same refusal whether or not the other project exists: nothing tells it apart
        assert (other_code, other_details) == (nowhere_code, nowhere_details), (rpc, role)
        assert OTHER not in other_details and response is None


def request_id(details: str) -> str:
    """The token id a NOT_FOUND names (it differs between the two calls)."""
    return details.split("'")[1] if "'" in details else ""


def test_denied_calls_change_nothing_in_the_other_project(world: World) -> None:
    before = (world.store.count_items(OTHER), world.store.close_requests(OTHER), world.store.annotations(OTHER),
              [t.token_id for t in world.store.tokens(OTHER)])
    for role, token in world.tokens.items():
        if role == "admin":
            continue
        for rpc, (_, request) in _requests(world).items():
            if rpc != "Access/RevokeToken":
                _call(world.target, token, rpc, request(OTHER))
    after = (world.store.count_items(OTHER), world.store.close_requests(OTHER), world.store.annotations(OTHER),
             [t.token_id for t in world.store.tokens(OTHER)])
    assert after == before


def test_the_annotator_is_the_caller_never_the_request(world: World) -> None:
    world.store.add_items([Item(OWN, "mine", "text", 1.0)])
    world.store.add_tasks([Task(OWN, "mine", 9.0, None, 1.0)])
    token, _ = issue(world.store, "test", "annotator", OWN, "ann-real", time.time())
    with WinnowClient(world.target, token) as ann:
        with pytest.raises(PermissionDenied):
            ann.lease(OWN, "someone-else", 1)
        leases = ann.lease(OWN, "", 1)
        assert [(lease.item_id, lease.annotator) for lease in leases] == [("mine", "ann-real")]
        for lease in leases:
            assert ann.submit(OWN, "", lease.item_id, "pos")
        assert {a.annotator for a in world.store.annotations(OWN)} >= {"ann-real"}


def test_answers_need_a_live_lease_and_leases_are_capped(world: World) -> None:
    world.store.add_items([Item(OWN, f"cap-{k}", "text", 1.0) for k in range(6)])
    world.store.add_tasks([Task(OWN, f"cap-{k}", 0.5, None, 1.0) for k in range(6)])
    token, _ = issue(world.store, "test", "annotator", OWN, "capped", time.time())
    with WinnowClient(world.target, token) as ann:
        with pytest.raises(LeaseRequired):
            ann.submit(OWN, "", "cap-0", "pos")
        first = ann.lease(OWN, "", 1000)  # asks for everything: gets max_open_leases (3)
        again = ann.lease(OWN, "", 1000)  # its own leases back, no more
        assert len(first) == 3 and [x.item_id for x in again] == [x.item_id for x in first]
        assert ann.submit(OWN, "", first[0].item_id, "neg")
        assert len(ann.lease(OWN, "", 1000)) == 3  # one answered: one more may be held


def test_expired_revoked_and_malformed_tokens_are_refused_alike(world: World) -> None:
    now = time.time()
    live, info = issue(world.store, "test", "viewer", OWN, None, now)
    expired, expired_info = mint("viewer", OWN, None, now - 100, expires_in_s=10)
    world.store.add_token(expired_info)
    forged = live[:-1] + ("A" if live[-1] != "A" else "B")  # right id, wrong secret
    with WinnowClient(world.target, live) as client:
        assert client.stats(OWN).project == OWN
        assert client.whoami().name == info.name
    world.store.revoke_token(info.token_id, time.time())
    for token in (live, expired, forged, "", "Bearer", "wn_short", "x" * 1000):
        with WinnowClient(world.target, token or None) as client, pytest.raises(Unauthenticated):
            client.stats(OWN)


def test_owners_manage_their_tokens_and_never_mint_an_admin(world: World) -> None:
    with WinnowClient(world.target, world.tokens["owner"]) as owner:
        token, info = owner.create_token("annotator", OWN, "new-person", expires_in_s=3600)
        assert (info.role, info.project, info.name) == ("annotator", OWN, "new-person") and info.expires_at
        assert token not in str(world.store.tokens(OWN))  # kept only as a hash
        assert info.token_id in [t.token_id for t in owner.tokens(OWN)]
        with WinnowClient(world.target, token) as person:
            assert person.whoami().name == "new-person"
            assert owner.revoke_token(info.token_id).revoked_at is not None
            with pytest.raises(Unauthenticated):
                person.whoami()
        for role, project in (("admin", None), ("owner", OTHER)):
            with pytest.raises(PermissionDenied):
                owner.create_token(role, project)
        with pytest.raises(PermissionDenied):
            owner.tokens(None)
        actions = [row[2] for row in world.store.audit_log(OWN)]
        assert "token_create" in actions and "token_revoke" in actions


def test_a_token_record_never_holds_the_token() -> None:
    token, info = mint("owner", OWN, "o", 1.0)
    assert token.startswith("wn_" + info.token_id + "_") and token not in repr(info)
    assert isinstance(info, TokenInfo) and len(info.token_hash) == 64


def test_an_owner_reads_and_verifies_its_audit_trail_and_nothing_else(world: World) -> None:
    world.store.add_items([Item(OWN, "audited", "a secret text", 1.0)])
    world.store.add_tasks([Task(OWN, "audited", 99.0, None, 1.0)])
    with WinnowClient(world.target, issue(world.store, "test", "annotator", OWN, "aud", time.time())[0]) as person:
        assert [lease.item_id for lease in person.lease(OWN, "", 1)] == ["audited"]
        person.submit(OWN, "", "audited", "pos")
    with WinnowClient(world.target, world.tokens["owner"]) as owner:
        trail = owner.audit_trail(OWN)
        assert trail and [r.n for r in trail] == list(range(1, len(trail) + 1))
        assert {"lease", "submit", "token_create"} <= {r.action for r in trail}
        assert all(r.chain == OWN for r in trail) and "a secret text" not in str(trail)  # ids, never text
        assert [(r.actor, r.objects) for r in trail if r.action in ("lease", "submit")][-2:] == \
            [("aud", ("audited",))] * 2
        later = owner.audit_trail(OWN, after=len(trail) - 2, limit=1)
        assert [r.n for r in later] == [len(trail) - 1]
        verdict = owner.verify_audit(OWN)
        assert verdict.intact and verdict.records == len(trail) and verdict.head_hash == trail[-1].hash
        with pytest.raises(PermissionDenied):
            owner.audit_trail(OTHER)
        with pytest.raises(PermissionDenied):
            owner.audit_trail(None)  # the global chain is the admin's
    with WinnowClient(world.target, world.tokens["admin"]) as admin:
        assert [r.action for r in admin.audit_trail(None)][:1] == ["token_create"]  # the admin tokens' chain
        world.token_id(OTHER)  # at least one record in the other project's chain
        assert admin.verify_audit(OTHER).intact
        with world.store.dialect.transaction() as tx:  # someone with the database's password edits a record
            tx.run("UPDATE audit_trail SET detail = 'x' WHERE chain = ? AND n = 1", (OTHER,))
        verdict = admin.verify_audit(OTHER)
        assert not verdict.intact and verdict.broken == f"chain '{OTHER}' record 1: its content does not match its " \
                                                         "hash (edited)"


def test_a_caller_lists_only_its_own_project(world: World) -> None:
    with WinnowClient(world.target, world.tokens["viewer"]) as viewer:
        assert [p.name for p in viewer.projects()] == [OWN]
        assert viewer.project(OWN).classes == CLASSES
    with WinnowClient(world.target, world.tokens["admin"]) as admin:
        assert {OWN, OTHER} <= {p.name for p in admin.projects()}
