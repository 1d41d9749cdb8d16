"""Extract the simulator's part of Twilio's API description.

    python -m simulators.telephony.spec.extract /path/to/twilio_api_v2010.json \
        --git-dir /path/to/twilio-oai/.git

reads the OpenAPI description of Twilio's 2010-04-01 REST API (the file
`spec/json/twilio_api_v2010.json` of https://github.com/twilio/twilio-oai) and
writes `twilio_api_v2010.subset.json` next to this script: every operation on
the paths the simulator plays (Calls, Conferences, Participants), each with its
path and query parameters (name, required, type, format, enum, pattern, length
and range), its form parameters (the same), and its answer (status and the
property names and types of the resource or page). Enum references are
resolved; descriptions and examples are left out.

The commit is read from the twilio-oai git repository (`--git-dir`, or the
repository the file lies in), and the file must be that commit's own blob, so
the extract always names the exact text it came from. The same input gives the
same output, byte for byte.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().with_name("twilio_api_v2010.subset.json")
SPEC_PATH = "spec/json/twilio_api_v2010.json"
REPOSITORY = "https://github.com/twilio/twilio-oai"
BASE = "/2010-04-01/Accounts/{AccountSid}"
PATHS = (
    f"{BASE}/Calls.json",
    f"{BASE}/Calls/{{Sid}}.json",
    f"{BASE}/Conferences.json",
    f"{BASE}/Conferences/{{Sid}}.json",
    f"{BASE}/Conferences/{{ConferenceSid}}/Participants.json",
    f"{BASE}/Conferences/{{ConferenceSid}}/Participants/{{CallSid}}.json",
)
METHODS = ("get", "post", "delete")
# What a parameter's or property's schema keeps (everything that constrains a value).
KEEP = ("type", "format", "enum", "pattern", "minLength", "maxLength", "minimum", "maximum", "nullable")
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


class ExtractError(Exception):
    pass


def _git(git_dir: Path, *args: str) -> str:
    result = subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ExtractError(f"git {' '.join(args)} failed in {git_dir}: {result.stderr.strip()}")
    return result.stdout


def _git_dir_of(spec_file: Path) -> Path:
    result = subprocess.run(["git", "-C", str(spec_file.parent), "rev-parse", "--absolute-git-dir"],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ExtractError(f"{spec_file} is not inside a git repository: give --git-dir (twilio-oai's repository)")
    return Path(result.stdout.strip())


def provenance(spec_file: Path, git_dir: Path, commit: str, repository: str, spec: dict) -> dict:
    """Where the description comes from: the commit, and proof the file is that commit's text."""
    commit = _git(git_dir, "rev-parse", f"{commit}^{{commit}}").strip()
    blob = _git(git_dir, "rev-parse", f"{commit}:{SPEC_PATH}").strip()
    actual = subprocess.run(["git", "hash-object", str(spec_file)], capture_output=True, text=True,
                            check=True).stdout.strip()
    if actual != blob:
        raise ExtractError(f"{spec_file} is not {SPEC_PATH} of commit {commit} (blob {actual}, expected {blob})")
    committed = _git(git_dir, "log", "-1", "--format=%cI", commit).strip()
    license_text = _git(git_dir, "show", f"{commit}:LICENSE").strip().splitlines()
    licence_name = license_text[0].strip() if license_text else "unknown"
    holder = next((line.strip() for line in license_text if line.strip().startswith("Copyright")), "")
    info_license = spec.get("info", {}).get("license", {})
    return {
        "repository": repository,
        "commit": commit,
        "committed": committed,
        "path": SPEC_PATH,
        "blob": blob,
        "license": f"{licence_name} ({holder}), the repository's LICENSE",
        "info_license": f"{info_license.get('name')} ({info_license.get('url')}), the description's info.license",
        "openapi": spec.get("openapi"),
        "info_version": spec.get("info", {}).get("version"),
    }


def _resolve(spec: dict, schema: dict) -> tuple[dict, str | None]:
    ref = schema.get("$ref")
    if ref is None:
        return schema, None
    name = ref.rsplit("/", 1)[-1]
    return spec["components"]["schemas"][name], name


def _constraints(spec: dict, schema: dict) -> dict:
    resolved, ref = _resolve(spec, schema)
    out = {key: resolved[key] for key in KEEP if key in resolved}
    if "nullable" in schema:
        out["nullable"] = schema["nullable"]
    if ref is not None and "enum" in resolved:
        out["enum_schema"] = ref
    if resolved.get("type") == "array":
        out["items"] = _constraints(spec, resolved.get("items", {}))
    elif ref is not None and "properties" in resolved:
        out["schema"] = ref
    return out


def _parameters(spec: dict, operation: dict, where: str) -> dict:
    found = {}
    for parameter in operation.get("parameters", []):
        if parameter.get("in") != where:
            continue
        found[parameter["name"]] = {"required": bool(parameter.get("required")),
                                    **_constraints(spec, parameter.get("schema", {}))}
    return found


def _form(spec: dict, operation: dict) -> dict | None:
    body = operation.get("requestBody")
    if body is None:
        return None
    content = body.get("content", {})
    if FORM not in content:
        raise ExtractError(f"{operation['operationId']}: the request body is not {FORM}")
    schema, _ = _resolve(spec, content[FORM]["schema"])
    required = set(schema.get("required", ()))
    return {name: {"required": name in required, **_constraints(spec, value)}
            for name, value in schema.get("properties", {}).items()}


def _answer(spec: dict, operation: dict, schemas: dict) -> dict:
    successes = sorted(code for code in operation.get("responses", {}) if code.startswith("2"))
    if len(successes) != 1:
        raise ExtractError(f"{operation['operationId']}: expected one success answer, found {successes}")
    status = successes[0]
    content = operation["responses"][status].get("content", {})
    if JSON not in content:
        return {"status": int(status)}
    schema, name = _resolve(spec, content[JSON]["schema"])
    if name is not None:
        _schema(spec, name, schemas)
        return {"status": int(status), "schema": name}
    page = {}
    key = item = None
    for prop, value in schema.get("properties", {}).items():
        if value.get("type") == "array":
            key = prop
            _, item = _resolve(spec, value.get("items", {}))
            _schema(spec, item, schemas)
        else:
            page[prop] = _constraints(spec, value)
    if key is None or item is None:
        raise ExtractError(f"{operation['operationId']}: a page without its array of resources")
    return {"status": int(status), "page": {"key": key, "items": item, "properties": page}}


def _schema(spec: dict, name: str, schemas: dict) -> None:
    if name in schemas:
        return
    schema = spec["components"]["schemas"][name]
    schemas[name] = {"properties": {prop: _constraints(spec, value)
                                    for prop, value in schema.get("properties", {}).items()}}


def extract(spec: dict, source: dict) -> dict:
    operations, schemas = {}, {}
    for path in PATHS:
        item = spec["paths"].get(path)
        if item is None:
            raise ExtractError(f"{path} is not in the description")
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            operations[operation["operationId"]] = {
                "method": method.upper(),
                "path": path,
                "server": (item.get("servers") or spec.get("servers") or [{}])[0].get("url"),
                "path_params": _parameters(spec, operation, "path"),
                "query_params": _parameters(spec, operation, "query"),
                "form_params": _form(spec, operation),
                "answer": _answer(spec, operation, schemas),
            }
    return {
        "about": "Twilio's API description (OpenAPI), reduced to the operations the callpull simulator serves. "
                 "Written by `python -m simulators.telephony.spec.extract`; do not edit by hand.",
        "source": source,
        "operations": operations,
        "schemas": dict(sorted(schemas.items())),
    }


def render(subset: dict) -> str:
    return json.dumps(subset, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path, help=f"twilio_api_v2010.json ({SPEC_PATH} of twilio-oai)")
    parser.add_argument("--git-dir", type=Path, help="twilio-oai's git directory (default: the file's repository)")
    parser.add_argument("--commit", default="HEAD", help="the commit the file is from (default HEAD)")
    parser.add_argument("--repository", default=REPOSITORY, help="the repository's public address")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write (default: next to this script)")
    args = parser.parse_args(argv)
    try:
        spec = json.loads(args.spec.read_text())
        git_dir = args.git_dir or _git_dir_of(args.spec.resolve())
        source = provenance(args.spec, git_dir, args.commit, args.repository, spec)
        text = render(extract(spec, source))
    except (OSError, ValueError, KeyError, ExtractError) as exc:
        print(f"extract: {exc}", file=sys.stderr)
        return 1
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(text)} bytes, {len(json.loads(text)['operations'])} operations, "
          f"commit {source['commit'][:10]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
