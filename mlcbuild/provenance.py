"""Provenance of materialized artifacts: in-toto Statement v1 with an SLSA provenance v1 predicate.

One statement per artifact, written beside it (never inside the objects whose digests must
reproduce): `<name>-<quant>-MLC.provenance.json` beside the model folder, `<lib>.provenance.json`
beside each library. Its subjects are the artifact's files with their sha256; its build definition
names the recipe (path relative to the statement, sha256), the resolved source (HF repo + commit
sha, or a local folder's content digest), every node that produced the artifact (key, input
digests, output digest, toolchain; `builtWith`, the exact nvcc that ran where the key holds only a
pinned version) and the versions of mlcbuild, apache-tvm and nvcc (the one that ran). No times
and no absolute paths: the same build gives the same statement, so it can be compared and cached.
`verify_artifact` re-hashes an artifact on disk against its statement.

Signed provenance: with a signing key (--signing-key / $MLCBUILD_SIGNING_KEY, the ed25519 key that
signs cache entries), a DSSE envelope (in-toto's signature wrapper, what SLSA and sigstore use) is
written beside the statement as `<artifact>.provenance.dsse.json`: payloadType
`application/vnd.in-toto+json`, the statement's exact bytes as payload, and one ed25519 signature
over DSSE's pre-authentication encoding, under the same key id as cache entries. The statement
itself stays a plain in-toto statement, so tools that read it unsigned still can. A statement
alone proves integrity only (the files are what it lists); who wrote it is proven only by a
signature a trusted key ($MLCBUILD_TRUSTED_KEYS) checks.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mlcbuild.execute.base import BuildReport
from mlcbuild.plan.graph import BuildGraph, Node
from mlcbuild.artifact.layout import PROVENANCE_SUFFIX, artifact_of_statement, envelope_path, provenance_path
from mlcbuild.recipe.model import Recipe
from mlcbuild.store.cas import Store
from mlcbuild.store.fs import atomic_write_bytes, fs_errors
from mlcbuild.store.hashing import sha256_file
from mlcbuild.store.manifest import FileEntry, sha256_json

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://mlcbuild.dev/provenance/build/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_STATEMENT_BYTES = 64 << 20
"""A statement lists an artifact's files and nodes: kilobytes. A file near this size is not one."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class _Product:
    """One artifact being described: a model folder or one library file."""

    path: Path
    recipe: Recipe
    quantization: str
    nodes: list[str]  # the ids of the nodes whose outputs it is made of
    files: dict[str, FileEntry]  # subject name (relative to the statement's folder) → entry
    target: str | None = None


def _products(recipes: list[Recipe], graph: BuildGraph, report: BuildReport) -> list[_Product]:
    products: dict[Path, _Product] = {}
    broken: set[Path] = set()
    by_path = {str(r.path): r for r in recipes}
    for artifact in graph.artifacts:
        recipe = by_path.get(artifact.recipe)
        outcome = report.outcomes.get(artifact.node_id)
        if recipe is None:
            continue
        quant, target, path = artifact.quantization, artifact.target, artifact.path
        if outcome is None or not outcome.ok or outcome.manifest is None:
            broken.add(path)
            continue
        product = products.setdefault(path, _Product(path, recipe, quant, [], {}, target))
        product.nodes.append(artifact.node_id)
        for rel, entry in outcome.manifest.files.items():
            name = artifact.rename.get(rel, rel)
            product.files[name if artifact.kind == "library" else f"{path.name}/{name}"] = entry
    return [p for path, p in sorted(products.items()) if path not in broken]


def _closure(graph: BuildGraph, roots: Iterable[str]) -> list[Node]:
    ids = graph.closure(set(roots))
    return [n for n in graph.topological() if n.id in ids]


def _relpath(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).absolute(), Path(start).absolute())).as_posix()


def _source(recipe: Recipe, download: Node, here: Path) -> dict[str, Any]:
    """A download node as an SLSA resource: the HF repo at its commit, or the local folder's files."""
    params = download.params
    if params.get("repo"):
        return {
            "name": download.label,
            "uri": f"https://huggingface.co/{params['repo']}",
            "digest": {"gitCommit": params.get("revision")},
            "annotations": {
                "repo": params["repo"],
                "revision": params.get("revision"),
                "requested": recipe.source.revision,
                "allow_patterns": params.get("allow_patterns"),
            },
        }
    where = _relpath(Path(download.hints.get("path") or recipe.source.path or "."), here)
    return {
        "name": download.label,
        "uri": f"file:{where}",
        "digest": {"sha256": params.get("content")},
        "annotations": {"files": params.get("files")},
    }


def _node_record(node: Node, report: BuildReport, store: Store) -> dict[str, Any]:
    outcome = report.outcomes[node.id]
    action = store.get_action(outcome.key) if outcome.key else None
    preimage = action.preimage if action is not None else {}
    return {
        "kind": node.kind,
        "label": node.label,
        "key": outcome.key,
        "stepVersion": preimage.get("version"),
        "inputs": {role: {"sha256": sha256_json(view)} for role, view in sorted((preimage.get("inputs") or {}).items())},
        "output": {"sha256": outcome.manifest.digest if outcome.manifest else None},
        "toolchain": preimage.get("toolchain"),
        **({"builtWith": action.built_with} if action is not None and action.built_with else {}),
    }


def _recipe_digest(path: Path) -> str:
    """A recipe is a few hundred bytes the loader just read: hashed whole, not via the store's file hasher."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def statement(product: _Product, graph: BuildGraph, report: BuildReport, store: Store) -> dict[str, Any]:
    """The in-toto statement for one artifact (deterministic: no times, no absolute paths)."""
    from mlcbuild import __version__
    from mlcbuild.toolchain import tvm_version

    here = product.path.parent
    nodes = _closure(graph, product.nodes)
    records = [_node_record(n, report, store) for n in nodes]
    toolchain: dict[str, Any] = {"mlcbuild": __version__, "apache-tvm": tvm_version()}
    for record in records:
        for facts in (record["toolchain"], record.get("builtWith")):
            if isinstance(facts, dict) and facts.get("nvcc"):
                toolchain["nvcc"] = facts["nvcc"]
    external: dict[str, Any] = {
        "recipe": {"path": _relpath(product.recipe.path, here), "digest": {"sha256": _recipe_digest(product.recipe.path)}},
        "name": product.recipe.name,
        "quantization": product.quantization,
    }
    if product.target is not None:
        compile_node = next(n for n in nodes if n.kind == "compile")
        external["target"] = {"id": product.target, **compile_node.params["target"]}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": e.digest}} for name, e in sorted(product.files.items())],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {"toolchain": toolchain, "nodes": records},
                "resolvedDependencies": [
                    {"name": "recipe", "uri": f"file:{external['recipe']['path']}", "digest": external["recipe"]["digest"]},
                    *(_source(product.recipe, n, here) for n in nodes if n.kind == "download"),
                ],
            },
            "runDetails": {"builder": {"id": f"https://mlcbuild.dev/builder/mlcbuild@{__version__}"}},
        },
    }


def dumps(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def signing_key(flag: Path | None = None) -> Any | None:
    """The ed25519 key that signs cache entries, which signs provenance too: --signing-key, else
    $MLCBUILD_SIGNING_KEY, else None (provenance is written unsigned)."""
    from mlcbuild.store.remote import signing

    if flag is not None:
        return signing.load_signing_key(Path(flag), "--signing-key")
    env = os.environ.get(signing.ENV_SIGNING_KEY)
    return signing.load_signing_key(Path(env), signing.ENV_SIGNING_KEY) if env else None


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature covers (type and payload, length-prefixed)."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def envelope(data: bytes, key: Any) -> bytes:
    """A DSSE envelope signing the statement bytes `data` with `key`."""
    from mlcbuild.store.remote.signing import key_id

    sig = key.sign(_pae(PAYLOAD_TYPE, data))
    body = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(data).decode(),
        "signatures": [{"keyid": key_id(key.public_key()), "sig": base64.b64encode(sig).decode()}],
    }
    return dumps(body)


def _write_if_changed(path: Path, data: bytes) -> bool:
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    with fs_errors("output folder", path.parent):
        atomic_write_bytes(path, data)
    return True


def write_provenance(
    recipes: list[Recipe], graph: BuildGraph, report: BuildReport, store: Store, key: Any | None = None
) -> list[Path]:
    """Write (or leave, when unchanged) the statement of every fully materialized artifact and,
    with a signing key, its DSSE envelope; without one, an envelope left from a signed build goes
    (it would sign other bytes)."""
    written = []
    for product in _products(recipes, graph, report):
        path = provenance_path(product.path)
        data = dumps(statement(product, graph, report, store))
        if _write_if_changed(path, data):
            written.append(path)
        signed = envelope_path(product.path)
        if key is not None:
            if _write_if_changed(signed, envelope(data, key)):
                written.append(signed)
        elif os.path.lexists(signed):
            with fs_errors("output folder", signed.parent):
                signed.unlink()
    return written


@dataclass
class Verification:
    """What `verify` found for one artifact: integrity findings, and who signed its statement.

    `signer` is "signed by <key id>", "unsigned", or "not checked" (no trusted keys configured);
    a bad or untrusted signature is a finding."""

    problems: list[str] = field(default_factory=list)
    signer: str = "not checked"


def _load_statement(path: Path, artifact: Path) -> tuple[bytes, dict[str, Any]]:
    from mlcbuild.errors import UserError
    from mlcbuild.inputs import read_bytes, regular_file_problem

    if regular_file_problem(path) == "not found":
        raise UserError(f"{artifact}: no provenance beside it ({path.name} missing)")
    raw = read_bytes(path, str(path), MAX_STATEMENT_BYTES, what="provenance")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise UserError(f"{path}: not a provenance statement (JSON nested too deeply)") from None
    if not isinstance(data, dict) or data.get("_type") != STATEMENT_TYPE or data.get("predicateType") != PREDICATE_TYPE:
        raise UserError(f"{path}: not an in-toto statement with SLSA provenance v1")
    if not isinstance(data.get("subject"), list):
        raise UserError(f"{path}: its 'subject' is not a list of files")
    return raw, data


def _subject_file(here: Path, artifact: str, name: str) -> Path | str:
    """The file a subject names, or why it is not one of the artifact's files: a subject must be the
    library itself or a relative path inside the model folder, and stay inside after symlinks (a
    statement naming ../../etc/hostname must not make verify hash, or vouch for, that file)."""
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or "\0" in name or any(p in ("", ".", "..") for p in parts):
        return "not a relative path inside the artifact"
    if parts[0] != artifact:
        return f"outside the artifact {artifact}"
    file = here / name
    if len(parts) == 1:
        return "a symlink, not the artifact's file" if os.path.islink(file) else file
    if not os.path.realpath(file).startswith(os.path.realpath(here / artifact) + os.sep):
        return "resolves outside the artifact (a symlink)"
    return file


def _check_signature(path: Path, raw: bytes, artifact: Path, trusted: dict[str, Any]) -> tuple[str, str | None]:
    """(signer, finding): the envelope beside the statement, checked against trusted keys."""
    from cryptography.exceptions import InvalidSignature

    from mlcbuild.errors import MlcbuildError
    from mlcbuild.inputs import read_json

    signed = envelope_path(artifact)
    if not os.path.lexists(signed):
        return "unsigned", f"unsigned ({signed.name} missing) and trusted keys are configured"
    try:
        body = read_json(signed, str(signed), MAX_STATEMENT_BYTES * 2, what="signature envelope")
        payload = base64.b64decode(body.get("payload", ""), validate=True)
        signatures = body.get("signatures")
        if body.get("payloadType") != PAYLOAD_TYPE or not isinstance(signatures, list):
            raise ValueError("not a DSSE envelope of an in-toto statement")
    except (MlcbuildError, ValueError, TypeError) as e:
        return "bad signature", f"bad signature: {signed.name}: {e}"
    if payload != raw:
        return "bad signature", f"bad signature: {signed.name} signs other bytes than {path.name}"
    ids = []
    for signature in signatures:
        keyid = str(signature.get("keyid")) if isinstance(signature, dict) else "?"
        ids.append(keyid)
        key = trusted.get(keyid)
        if key is None:
            continue
        try:
            key.verify(base64.b64decode(str(signature.get("sig", "")), validate=True), _pae(PAYLOAD_TYPE, payload))
        except (InvalidSignature, ValueError):
            return "bad signature", f"bad signature by trusted key {keyid}"
        return f"signed by {keyid}", None
    return "bad signature", f"bad signature: signed by no trusted key (key ids: {', '.join(ids) or 'none'})"


def trusted_keys() -> dict[str, Any] | None:
    """$MLCBUILD_TRUSTED_KEYS as key id -> key; None when unset. Set but empty is an error (a CI
    secret that expanded to nothing must not turn checking off)."""
    from mlcbuild.store.remote import signing

    spec = os.environ.get(signing.ENV_TRUSTED_KEYS)
    return None if spec is None else signing.load_trusted_keys(spec)


def verify_artifact(artifact: Path, trusted: dict[str, Any] | None = None) -> Verification:
    """Mismatches between an artifact on disk and its statement, and, with trusted keys, whether
    one of them signed that statement.

    `artifact` is the model folder, a library, or the statement itself. A malformed statement
    (not JSON, not a statement, no subject list) is a UserError; a malformed subject is a finding.
    """
    artifact = Path(artifact)
    named = artifact_of_statement(artifact)
    if named is not None:
        path, artifact = artifact, named
    else:
        path = provenance_path(artifact)
    raw, data = _load_statement(path, artifact)
    here = path.parent
    result = Verification()
    problems = result.problems
    listed = set()
    for i, subject in enumerate(data["subject"]):
        name = subject.get("name") if isinstance(subject, dict) else None
        digest = subject.get("digest") if isinstance(subject, dict) else None
        want = digest.get("sha256") if isinstance(digest, dict) else None
        if not isinstance(name, str) or not name:
            problems.append(f"subject[{i}]: has no file name")
            continue
        listed.add(name)
        shown = name if name.isprintable() and len(name) <= 200 else repr(name[:200])
        if not isinstance(want, str) or not _SHA256.match(want):
            problems.append(f"{shown}: the provenance gives no sha256 digest")
            continue
        file = _subject_file(here, artifact.name, name)
        if isinstance(file, str):
            problems.append(f"{shown}: {file}")
            continue
        if not file.is_file():
            problems.append(f"{name}: missing")
            continue
        got = sha256_file(file)
        if got != want:
            problems.append(f"{name}: sha256 {got} but the provenance says {want}")
    folder = here / artifact.name
    if folder.is_dir():
        for dirpath, _, filenames in os.walk(folder):
            for fname in filenames:
                name = (Path(dirpath) / fname).relative_to(here).as_posix()
                if name not in listed and not fname.startswith("."):
                    problems.append(f"{name}: not in the provenance")
    problems.sort()
    if trusted is not None:
        result.signer, finding = _check_signature(path, raw, artifact, trusted)
        if finding:
            problems.append(finding)
    return result


def artifacts_under(folder: Path) -> list[Path]:
    """Every artifact with a statement under `folder` (an output folder such as dist/, holding many
    artifacts rather than being one): model folders, and libraries in its libs/."""
    found = [(p, artifact_of_statement(p)) for p in folder.rglob(f"*{PROVENANCE_SUFFIX}") if p.is_file()]
    return sorted(artifact for _, artifact in found if artifact is not None)
