"""Static checks of the container images and the reference cluster in ``docker/``.

No Docker engine runs on the development machines or in CI (the ``docker`` client is there but cannot
build or run anything), so nothing here builds an image or starts a container: the files are checked
statically. PyYAML reads ``docker/compose.yaml``; a small Dockerfile parser below (continuation lines,
comments, stages, instruction flags, ARG defaults) reads the Dockerfiles. The checks are cross-checks
against the rest of the repository: the paths a ``COPY`` needs, the exact pins in ``constraints/``, the
service names and ports of the ``cluster`` profile (``config/cluster.yaml``), the variables in
``docker/.env.example``.

Each check is a function that returns a list of problems; the tests assert that the real files have none,
and the ``test_checks_catch_known_*_mistakes`` tests feed the checks known-bad inputs to prove they can fail.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
CLUSTER_PROFILE = REPO / "config" / "cluster.yaml"
MAIN_CONSTRAINTS = REPO / "constraints" / "main.txt"

REQUIRED_SERVICES = {
    "postgres",
    "cassandra-1",
    "cassandra-2",
    "cassandra-3",
    "spark-master",
    "spark-worker",
    "mlflow",
    "triton",
    "api",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
}
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"}
CASSANDRA_NODES = ["cassandra-1", "cassandra-2", "cassandra-3"]

# Paths that other parts of the project provide; named in failure messages so a missing one is easy to place.
PROVIDED_ELSEWHERE = {"dags", "plugins", "expectations", "serving", "constraints/serving.txt"}

# Ports the official images listen on (they have no Dockerfile here to read EXPOSE from).
OFFICIAL_IMAGE_PORTS = {"postgres": {5432}, "cassandra": {7000, 7001, 7199, 9042, 9160}}

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|FERNET|PRIVATE_KEY|API_KEY|CREDENTIAL", re.I)
# A secret value in compose must be exactly one ${VAR} (or ${VAR:?message}) reference: no literal, no default.
SECRET_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::?\?[^}]*)?\}$")
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^:/@\s]+:(?P<password>[^@\s]+)@", re.I)
LITERAL_SECRET = re.compile(
    r"(?i)(?<![A-Za-z0-9])(password|passwd|secret|token|api_?key)\s*=\s*(?P<value>[^\s,;&|)]+)"
)
FERNET_LIKE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}=")
VAR_REF = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


# --------------------------------------------------------------------------------------------------------
# A tiny Dockerfile parser
# --------------------------------------------------------------------------------------------------------

INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


class DockerfileError(ValueError):
    """The Dockerfile cannot be parsed; the message names the line."""


@dataclass
class Instruction:
    keyword: str
    rest: str  # everything after the keyword, continuation lines joined
    lineno: int
    flags: dict[str, str] = field(default_factory=dict)  # leading --name=value options
    body: str = ""  # rest without the leading flags

    def words(self) -> list[str]:
        """The arguments: a JSON array (exec form) or whitespace-separated words."""
        text = self.body.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                pass
            else:
                if isinstance(value, list) and all(isinstance(v, str) for v in value):
                    return value
        return text.split()


@dataclass
class Stage:
    index: int
    base: str  # after ARG substitution
    name: str | None
    instructions: list[Instruction]


@dataclass
class Dockerfile:
    path: Path
    instructions: list[Instruction]
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, target: str | None) -> Stage:
        if target is None:
            return self.stages[-1]
        for stage in self.stages:
            if stage.name == target:
                return stage
        raise KeyError(f"{self.path}: no stage named {target!r}")

    def parent(self, stage: Stage) -> Stage | None:
        return next((s for s in self.stages[: stage.index] if s.name == stage.base), None)

    def lineage(self, stage: Stage) -> list[Stage]:
        """The stage and the stages of this file it is built FROM, nearest first."""
        chain: list[Stage] = []
        current: Stage | None = stage
        while current is not None:
            chain.append(current)
            current = self.parent(current)
        return chain

    def user(self, stage: Stage) -> str | None:
        """The USER the stage runs as, following FROM <earlier stage>; None = the base image's default."""
        for s in self.lineage(stage):
            users = [i for i in s.instructions if i.keyword == "USER"]
            if users:
                return substitute(users[-1].body.strip(), self.global_args)
        return None

    def exposed(self, stage: Stage) -> set[int]:
        ports: set[int] = set()
        for s in self.lineage(stage):
            for ins in s.instructions:
                if ins.keyword == "EXPOSE":
                    ports |= {int(p.split("/")[0]) for p in ins.words()}
        return ports

    def last(self, stage: Stage, keyword: str) -> Instruction | None:
        for s in self.lineage(stage):
            found = [i for i in s.instructions if i.keyword == keyword]
            if found:
                return found[-1]
        return None


def substitute(text: str, variables: dict[str, str]) -> str:
    """Replace $VAR / ${VAR} / ${VAR:-default} by their values (ARG defaults); unknown ones stay as they are."""

    def repl(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        if name in variables and variables[name] != "":
            return variables[name]
        if match.group("op") in (":-", "-"):
            return match.group("arg")
        return match.group(0)

    return VAR_REF.sub(repl, text)


def _split_flags(rest: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    body = rest.lstrip()
    while body.startswith("--"):
        token, _, remainder = body.partition(" ")
        name, _, value = token[2:].partition("=")
        flags[name] = value
        body = remainder.lstrip()
    return flags, body


def parse_dockerfile_text(text: str, path: Path = Path("Dockerfile")) -> Dockerfile:
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments, parser directives and blank lines (also inside a continuation)
        if not parts:
            start = lineno
        continued = stripped.endswith("\\")
        parts.append(stripped[:-1].rstrip() if continued else stripped)
        if continued:
            continue
        line = " ".join(p for p in parts if p)
        parts = []
        keyword, _, rest = line.partition(" ")
        if keyword.upper() not in INSTRUCTIONS:
            raise DockerfileError(f"{path}:{start}: unknown instruction {keyword!r}")
        if keyword.upper() in {"RUN", "COPY", "ADD"} and re.search(r"<<-?['\"]?[A-Za-z_]+", rest):
            raise DockerfileError(f"{path}:{start}: heredocs are not supported by this parser; avoid them")
        flags, body = _split_flags(rest) if keyword.upper() in {"FROM", "RUN", "COPY", "ADD"} else ({}, rest)
        instructions.append(Instruction(keyword.upper(), rest, start, flags, body))
    if parts:
        raise DockerfileError(f"{path}:{start}: the file ends inside a continuation line")

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = substitute(ins.body, global_args).split()
            if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
                raise DockerfileError(
                    f"{path}:{ins.lineno}: expected 'FROM image [AS name]', got {ins.rest!r}"
                )
            stages.append(Stage(len(stages), words[0], words[2] if len(words) == 3 else None, []))
        elif not stages:
            if ins.keyword != "ARG":
                raise DockerfileError(
                    f"{path}:{ins.lineno}: {ins.keyword} before the first FROM (only ARG may come first)"
                )
            name, _, default = ins.body.strip().partition("=")
            global_args[name] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise DockerfileError(f"{path}: no FROM instruction")
    return Dockerfile(path, instructions, global_args, stages)


@cache
def parse_dockerfile(path: Path) -> Dockerfile:
    return parse_dockerfile_text(path.read_text(), path)


# --------------------------------------------------------------------------------------------------------
# .dockerignore matching (enough of Docker's rules: **, *, ?, ! exceptions, last match wins, parents)
# --------------------------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"$")


def dockerignore_patterns(dockerfile: Path, context: Path) -> list[str]:
    """BuildKit uses <Dockerfile>.dockerignore next to the Dockerfile, else <context>/.dockerignore."""
    for candidate in (dockerfile.with_name(dockerfile.name + ".dockerignore"), context / ".dockerignore"):
        if candidate.exists():
            lines = [line.strip() for line in candidate.read_text().splitlines()]
            return [line for line in lines if line and not line.startswith("#")]
    return []


def is_ignored(relpath: str, patterns: list[str]) -> bool:
    parts = relpath.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]  # the path and its parent folders
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored


# --------------------------------------------------------------------------------------------------------
# Loading compose
# --------------------------------------------------------------------------------------------------------


def load_env_example(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line!r}"
        values[key.strip()] = value.strip()
    return values


def interpolate(text: str, env: dict[str, str], strict: bool = True) -> str:
    """Compose-style interpolation ($$ is a literal $); strict=False resolves an undefined variable to ""."""

    def repl(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg")
        value = env.get(name)
        if op in (":-", "-"):
            return value if value not in (None, "") or (op == "-" and value is not None) else arg
        if op in (":+", "+"):
            return arg if value else ""
        if value is None:
            if strict:
                raise KeyError(f"${{{name}}} is not defined")
            return ""
        return value

    return "\0".join(VAR_REF.sub(repl, piece) for piece in text.split("$$")).replace("\0", "$")


def strings_in(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings_in(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings_in(value)]
    return []


def resolve(node: Any, env: dict[str, str], strict: bool = True) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, strict)
    if isinstance(node, dict):
        return {key: resolve(value, env, strict) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, env, strict) for value in node]
    return node


@cache
def compose_raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), f"{COMPOSE_FILE} is not a YAML mapping"
    return data


@cache
def compose() -> dict[str, Any]:
    """The compose file with ${VAR}s resolved from docker/.env.example (as after `cp .env.example .env`).

    Lenient: an undefined variable becomes "" here; test_every_compose_variable_is_defined_or_defaulted
    reports it (strictly) instead of every test failing on it."""
    return resolve(compose_raw(), load_env_example(), strict=False)


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_words(value: Any) -> list[str]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else shlex.split(value)


def healthcheck_words(service: dict[str, Any]) -> list[str]:
    test = (service.get("healthcheck") or {}).get("test")
    return command_words(test) if test else []


def build_of(service: dict[str, Any]) -> tuple[Path, Path, str | None] | None:
    """(context, Dockerfile, target) of a service that is built here."""
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        build = {"context": build}
    context = (DOCKER / build.get("context", ".")).resolve()
    return context, context / build.get("dockerfile", "Dockerfile"), build.get("target")


def image_stage(service: dict[str, Any]) -> tuple[Dockerfile, Stage] | None:
    built = build_of(service)
    if built is None:
        return None
    _, dockerfile, target = built
    parsed = parse_dockerfile(dockerfile)
    return parsed, parsed.stage(target)


def published(service: dict[str, Any]) -> list[tuple[str, int | None, int, str]]:
    """(host ip, host port or None, container port, protocol) for each entry of `ports`."""
    result = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            host = entry.get("published")
            result.append(
                (
                    str(entry.get("host_ip", "")),
                    int(host) if host not in (None, "") else None,
                    int(entry["target"]),
                    str(entry.get("protocol", "tcp")),
                )
            )
            continue
        spec, _, proto = str(entry).partition("/")
        pieces = spec.rsplit(":", 2)
        ip = pieces[0] if len(pieces) == 3 else ""
        host = pieces[-2] if len(pieces) >= 2 else None

        def expand(text: str) -> list[int]:
            low, _, high = text.partition("-")
            return list(range(int(low), int(high or low) + 1))

        containers = expand(pieces[-1])
        hosts: list[int | None] = expand(host) if host else [None] * len(containers)
        if len(hosts) != len(containers):
            raise ValueError(f"port range lengths differ in {entry!r}")
        result += [(ip, h, c, proto or "tcp") for h, c in zip(hosts, containers, strict=True)]
    return result


PORT_FLAG = re.compile(r"--(?:[a-z]+-)*port[= ](\d+)")
LOCAL_PORT = re.compile(r"(?:localhost|127\.0\.0\.1)['\"]?\s*[:,]\s*(\d+)")


def declared_ports(service: dict[str, Any]) -> set[int]:
    """Ports the service's process is known to listen on: EXPOSE, port flags, *_PORT settings, image facts."""
    ports: set[int] = set()
    staged = image_stage(service)
    texts = [" ".join(command_words(service.get("command")))]
    if staged:
        dockerfile, stage = staged
        ports |= dockerfile.exposed(stage)
        for keyword in ("CMD", "ENTRYPOINT"):
            ins = dockerfile.last(stage, keyword)
            if ins is not None:
                texts.append(" ".join(ins.words()))
    else:
        repo_name = str(service.get("image", "")).split(":")[0].split("/")[-1]
        ports |= OFFICIAL_IMAGE_PORTS.get(repo_name, set())
    for text in texts:
        ports |= {int(p) for p in PORT_FLAG.findall(text)}
    for key, value in environment(service).items():
        if key.endswith("_PORT") and value.isdigit():
            ports.add(int(value))
    return ports


def is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no"


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for each entry of `volumes`."""
    mounts = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            mounts.append((str(entry.get("source", "")), str(entry["target"]), bool(entry.get("read_only"))))
            continue
        pieces = str(entry).split(":")
        if len(pieces) == 1:
            mounts.append(("", pieces[0], False))
        else:
            mounts.append((pieces[0], pieces[1], len(pieces) > 2 and "ro" in pieces[2].split(",")))
    return mounts


def is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def memory_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmgt]?)b?", str(text).strip().lower())
    assert match, f"not a memory size: {text!r}"
    return int(float(match.group(1)) * 1024 ** "bkmgt".index(match.group(2) or "b"))


def pin(name: str, constraints: Path = MAIN_CONSTRAINTS) -> str:
    for line in constraints.read_text().splitlines():
        if line.lower().startswith(name.lower() + "=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in {constraints}")


def cluster_profile() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_PROFILE.read_text())


def all_dockerfiles() -> list[Path]:
    return sorted(DOCKER.rglob("Dockerfile"))


def dockerfile_builds() -> dict[Path, tuple[Path, set[str | None]]]:
    """Dockerfile -> (build context, targets compose builds from it)."""
    found: dict[Path, tuple[Path, set[str | None]]] = {}
    for service in services().values():
        built = build_of(service)
        if built:
            context, dockerfile, target = built
            found.setdefault(dockerfile, (context, set()))[1].add(target)
    return found


def build_context(dockerfile: Path) -> tuple[Path, set[str | None]]:
    """The context and targets compose uses for this Dockerfile (the repository root if compose does not)."""
    return dockerfile_builds().get(dockerfile.resolve(), (REPO, set()))


def case_id(value: Any) -> str:
    if isinstance(value, Path):
        return rel(value)
    if isinstance(value, set):
        return ",".join(sorted(str(v) for v in value if v)) or "default"
    return str(value)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------------------
# The checks (each returns a list of problems)
# --------------------------------------------------------------------------------------------------------


def dockerfile_problems(path: Path, context: Path, targets: set[str | None] | None = None) -> list[str]:
    """Structure, COPY sources, remote ADD, non-root final stages, secrets, pinned pip installs."""
    try:
        parsed = parse_dockerfile_text(path.read_text(), path)
    except DockerfileError as exc:
        return [str(exc)]
    problems: list[str] = []
    ignore = dockerignore_patterns(path, context)
    stage_names = {s.name for s in parsed.stages if s.name}
    for ins in parsed.instructions:
        where = f"{rel(path)}:{ins.lineno}"
        if ins.keyword in {"COPY", "ADD"}:
            if ins.keyword == "ADD" and re.search(r"(?:https?|ftp)://|git@|\.git\b", ins.body):
                problems.append(f"{where}: ADD of a remote URL (download in a RUN with a checksum instead)")
            if "from" in ins.flags:
                if ins.flags["from"] not in stage_names and ":" not in ins.flags["from"]:
                    problems.append(f"{where}: COPY --from={ins.flags['from']} names no stage of this file")
                continue
            words = ins.words()
            if len(words) < 2:
                problems.append(f"{where}: {ins.keyword} needs a source and a destination")
                continue
            for source in words[:-1]:
                source = substitute(source, parsed.global_args)
                matches = list(context.glob(source.rstrip("/"))) if any(c in source for c in "*?[") else []
                target = context / source
                if not (matches or target.exists()):
                    owner = next((p for p in PROVIDED_ELSEWHERE if source.strip("/").startswith(p)), None)
                    hint = (
                        f" ({owner} is provided by the platform code and must exist to build)"
                        if owner
                        else ""
                    )
                    problems.append(
                        f"{where}: {ins.keyword} source {source!r} does not exist in the build context "
                        f"{rel(context) or '.'}{hint}"
                    )
                elif is_ignored(source, ignore):
                    problems.append(
                        f"{where}: {ins.keyword} source {source!r} is excluded by the .dockerignore"
                    )
        if ins.keyword in {"ENV", "ARG"}:
            names = [w.split("=", 1)[0] for w in ins.body.split() if "=" in w] or ins.body.split()[:1]
            for name in names:
                if SECRET_NAME.search(name) and not name.endswith(("_FILE", "_VERSION")):
                    problems.append(f"{where}: {ins.keyword} {name} looks like a secret baked into the image")
        if ins.keyword == "RUN":
            problems += [f"{where}: {p}" for p in pip_problems(ins.body, context)]
    problems += secret_text_problems(path.read_text(), rel(path))
    checked = set(targets or set()) | {None}
    for target in sorted(checked, key=str):
        try:
            stage = parsed.stage(target)
        except KeyError as exc:
            problems.append(str(exc))
            continue
        user = parsed.user(stage)
        label = f"stage {stage.name or stage.index} ({'default' if target is None else 'target'})"
        if user is None:
            problems.append(f"{rel(path)}: {label} sets no USER (runs as the base image's user, maybe root)")
        elif user.split(":")[0] in {"root", "0"} or "$" in user:
            problems.append(f"{rel(path)}: {label} runs as {user!r}; the final USER must be non-root")
    return problems


PIP_OPTIONS_WITH_VALUE = {
    "-c", "--constraint", "-r", "--requirement", "-e", "--editable", "-t", "--target", "-i", "--index-url",
    "--extra-index-url", "-f", "--find-links", "--root-user-action", "--cache-dir", "--prefix", "--python",
}  # fmt: skip


def pip_problems(run: str, context: Path) -> list[str]:
    """Every `pip install` is either constrained by an existing constraints/*.txt or pins each package."""
    problems = []
    for segment in re.split(r"&&|\|\||;", run):
        if not re.search(r"\bpip3? install\b", segment):
            continue
        try:
            words = shlex.split(segment)
        except ValueError as exc:
            problems.append(f"cannot read pip command {segment.strip()!r}: {exc}")
            continue
        words = words[words.index("install") + 1 :]
        constraints, requirements = [], []
        i = 0
        while i < len(words):
            word = words[i]
            name, eq, value = word.partition("=")
            if word in PIP_OPTIONS_WITH_VALUE or (eq and name in PIP_OPTIONS_WITH_VALUE):
                value = value if eq else (words[i + 1] if i + 1 < len(words) else "")
                i += 1 if eq else 2
                if name in {"-c", "--constraint"}:
                    constraints.append(value)
                elif name in {"-e", "--editable"}:
                    requirements.append(value)
                continue
            if not word.startswith("-"):
                requirements.append(word)
            i += 1
        for constraint in constraints:
            match = re.search(r"constraints/[\w.-]+$", constraint)
            if not match:
                problems.append(
                    f"pip constraint file {constraint!r} is not one of the repository's constraints/"
                )
            elif not (context / match.group(0)).exists():
                problems.append(
                    f"pip constraint file {match.group(0)} (used by `pip install {' '.join(words)}`) does not "
                    f"exist in the repository; it holds this image's exact pins and must be added"
                )
        if not constraints:
            loose = [r for r in requirements if "==" not in r]
            if loose:
                problems.append(
                    f"unpinned pip install of {loose}: use -c constraints/<file>.txt or name==version"
                )
    return problems


def secret_text_problems(text: str, where: str) -> list[str]:
    problems = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for match in LITERAL_SECRET.finditer(line):
            if not match.group("value").startswith(("$", '"$', "'$")):
                problems.append(f"{where}:{lineno}: literal secret {match.group(0)!r}")
        if FERNET_LIKE.search(line) or "-----BEGIN" in line:
            problems.append(f"{where}:{lineno}: a key-like literal")
    return problems


def compose_secret_problems(raw: dict[str, Any]) -> list[str]:
    """Secrets in compose (raw, before interpolation) are bare ${VAR} references without defaults."""
    problems = []
    for name, service in (raw.get("services") or {}).items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE") and not SECRET_REFERENCE.match(value):
                problems.append(
                    f"service {name}: {key} must be a ${{VAR}} reference from docker/.env, got {value!r}"
                )
        if service.get("privileged"):
            problems.append(f"service {name}: privileged containers are not needed here")
        for source, _, _ in volume_mounts(service):
            if "docker.sock" in source:
                problems.append(f"service {name}: mounts the Docker socket")
    for value in strings_in(raw):
        for match in URL_PASSWORD.finditer(value):
            if not SECRET_REFERENCE.match(match.group("password")):
                problems.append(f"a URL embeds a literal password: {value!r}")
    return problems


def compose_variable_problems(raw_text: str, env_example: dict[str, str]) -> list[str]:
    """Every ${VAR} is defined in .env.example or has a default; every .env.example entry is used."""
    problems, used = [], set()
    data = yaml.safe_load(raw_text)
    for value in strings_in(data):
        for match in VAR_REF.finditer(value.replace("$$", "")):
            name = match.group("braced") or match.group("bare")
            used.add(name)
            if match.group("op") in (":-", "-", ":+", "+"):
                continue
            if name not in env_example:
                problems.append(
                    f"${{{name}}} is used in compose but neither defined in .env.example nor defaulted"
                )
    problems += [f"{name} in .env.example is not used by compose" for name in sorted(set(env_example) - used)]
    return problems


def env_file_problems(services_: dict[str, dict[str, Any]], base: Path) -> list[str]:
    """env_file entries exist; docker/.env (the git-ignored copy) may only be referenced as optional."""
    problems = []
    for name, service in services_.items():
        entries = service.get("env_file") or []
        for entry in [entries] if isinstance(entries, str | dict) else entries:
            path, required = (
                (entry, True) if isinstance(entry, str) else (entry["path"], entry.get("required", True))
            )
            target = (base / path).resolve()
            if target == (base / ".env").resolve():
                if required:
                    problems.append(
                        f"service {name}: env_file {path} is the uncommitted copy: set required: false"
                    )
                if not (base / ".env.example").exists():
                    problems.append(f"service {name}: env_file {path} has no .env.example to copy from")
            elif not target.exists():
                problems.append(f"service {name}: env_file {path} does not exist")
    return problems


def port_problems(services_: dict[str, dict[str, Any]]) -> list[str]:
    problems, seen = [], {}
    for name, service in services_.items():
        try:
            entries = published(service)
        except (ValueError, KeyError) as exc:
            problems.append(f"service {name}: unreadable ports: {exc}")
            continue
        for _ip, host, container, proto in entries:
            if host is None:
                continue
            if not 1 <= host <= 65535 or not 1 <= container <= 65535:
                problems.append(f"service {name}: port out of range {host}:{container}")
            if (host, proto) in seen:
                problems.append(
                    f"host port {host}/{proto} is published by both {seen[host, proto]} and {name}"
                )
            seen[host, proto] = name
    return problems


def depends_on_problems(services_: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    for name, service in services_.items():
        for target, condition in depends_on(service).items():
            if target not in services_:
                problems.append(f"service {name} depends on {target}, which is not a service")
                continue
            if condition == "service_healthy" and not services_[target].get("healthcheck"):
                problems.append(f"service {name} waits for {target} to be healthy, but it has no healthcheck")
            if condition == "service_completed_successfully" and not is_one_shot(services_[target]):
                problems.append(f"service {name} waits for {target} to complete, but it restarts")
            if condition not in {"service_started", "service_healthy", "service_completed_successfully"}:
                problems.append(f"service {name}: unknown depends_on condition {condition!r}")

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            problems.append("depends_on cycle: " + " -> ".join([*path[path.index(node) :], node]))
            return
        for nxt in depends_on(services_.get(node, {})):
            if nxt in services_:
                visit(nxt, [*path, node])

    for name in services_:
        visit(name, [])
    return sorted(set(problems))


# --------------------------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------------------------


def test_compose_parses_and_has_the_cluster_services():
    data = compose_raw()
    assert isinstance(data.get("services"), dict), "compose.yaml has no services mapping"
    missing = REQUIRED_SERVICES - set(data["services"])
    assert not missing, f"compose.yaml lacks services {sorted(missing)}"


def test_every_build_context_and_dockerfile_exists():
    problems = []
    used = set()
    for name, service in services().items():
        built = build_of(service)
        if built is None:
            if not service.get("image"):
                problems.append(f"service {name} has neither build nor image")
            continue
        context, dockerfile, target = built
        used.add(dockerfile)
        if not context.is_dir():
            problems.append(f"service {name}: build context {context} does not exist")
        if not dockerfile.is_file():
            problems.append(f"service {name}: Dockerfile {dockerfile} does not exist")
            continue
        if target is not None and target not in {s.name for s in parse_dockerfile(dockerfile).stages}:
            problems.append(f"service {name}: build target {target!r} is not a stage of {rel(dockerfile)}")
    orphans = [rel(p) for p in all_dockerfiles() if p.resolve() not in used]
    assert not problems, "\n".join(problems)
    assert not orphans, f"Dockerfiles no compose service builds: {orphans}"


def test_env_files_exist_or_are_the_optional_local_copy():
    assert ENV_EXAMPLE.is_file(), "docker/.env.example is missing"
    problems = env_file_problems(compose_raw()["services"], DOCKER)
    assert not problems, "\n".join(problems)


def test_every_compose_variable_is_defined_or_defaulted():
    problems = compose_variable_problems(COMPOSE_FILE.read_text(), load_env_example())
    assert not problems, "\n".join(problems)
    resolve(compose_raw(), load_env_example(), strict=True)  # the whole file interpolates with the example


def test_secrets_only_come_from_the_environment():
    problems = compose_secret_problems(compose_raw())
    problems += secret_text_problems(COMPOSE_FILE.read_text(), "docker/compose.yaml")
    for script in DOCKER.rglob("*.sh"):
        problems += secret_text_problems(script.read_text(), rel(script))
    assert not problems, "\n".join(problems)


def test_env_example_holds_placeholders_and_the_real_file_is_ignored():
    text = ENV_EXAMPLE.read_text()
    assert "cp docker/.env.example docker/.env" in text, ".env.example must say how to make docker/.env"
    for key, value in load_env_example().items():
        if SECRET_NAME.search(key):
            assert value.startswith("change-me"), f"{key} in .env.example must be a change-me placeholder"
    if shutil.which("git") and (REPO / ".git").exists():
        result = subprocess.run(
            ["git", "check-ignore", "-q", "--no-index", "docker/.env"], cwd=REPO, check=False
        )
        assert result.returncode == 0, "docker/.env (the real secrets) is not ignored by git"


def test_host_ports_are_unique_integers():
    problems = port_problems(services())
    assert not problems, "\n".join(problems)
    assert any(published(s) for s in services().values()), "no ports are published at all"


def test_published_ports_are_ports_the_services_listen_on():
    problems = []
    for name, service in services().items():
        declared = declared_ports(service)
        for _, host, container, _ in published(service):
            if container not in declared:
                problems.append(
                    f"service {name} publishes container port {container} (host {host}), but its "
                    f"image/command listens on {sorted(declared)}"
                )
        for port in {int(p) for p in LOCAL_PORT.findall(" ".join(healthcheck_words(service)))}:
            if port not in declared:
                problems.append(
                    f"service {name}: healthcheck probes port {port}, not one of {sorted(declared)}"
                )
        staged = image_stage(service)
        if staged:
            exposed = staged[0].exposed(staged[1])
            flags = {int(p) for p in PORT_FLAG.findall(" ".join(command_words(service.get("command"))))}
            if flags - exposed:
                problems.append(f"service {name}: command listens on {sorted(flags - exposed)}, not EXPOSEd")
    assert not problems, "\n".join(problems)


def test_depends_on_targets_exist_and_conditions_hold():
    problems = depends_on_problems(services())
    assert not problems, "\n".join(problems)


def test_long_running_services_have_healthchecks_and_memory_limits():
    problems = []
    for name, service in services().items():
        if is_one_shot(service):
            continue
        check = service.get("healthcheck") or {}
        if not check.get("test") or check.get("disable") or healthcheck_words(service)[:1] == ["NONE"]:
            problems.append(f"service {name} has no healthcheck")
        limit = (((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}).get("memory")
        if not (limit or service.get("mem_limit")):
            problems.append(f"service {name} has no memory limit")
    assert not problems, "\n".join(problems)


def test_named_volumes_are_declared_and_bind_mounts_exist():
    declared = set(compose().get("volumes") or {})
    problems = []
    for name, service in services().items():
        for source, target, _ in volume_mounts(service):
            if is_named_volume(source) and source not in declared:
                problems.append(f"service {name}: volume {source} is not declared under volumes:")
            elif source.startswith((".", "/")) and not (DOCKER / source).exists():
                problems.append(f"service {name}: bind mount source {source} does not exist")
            if not target.startswith("/"):
                problems.append(f"service {name}: mount target {target} is not absolute")
    unused = declared - {s for svc in services().values() for s, _, _ in volume_mounts(svc)}
    assert not problems, "\n".join(problems)
    assert not unused, f"declared but unused volumes: {sorted(unused)}"


def test_cassandra_nodes_form_one_staggered_cluster():
    nodes = {name: services()[name] for name in CASSANDRA_NODES}
    envs = {name: environment(node) for name, node in nodes.items()}
    for name, node in nodes.items():
        env = envs[name]
        assert node.get("image") == "cassandra:5.0", f"{name}: image must be cassandra:5.0"
        assert env.get("CASSANDRA_ENDPOINT_SNITCH") == "GossipingPropertyFileSnitch", name
        seeds = [s.strip() for s in env.get("CASSANDRA_SEEDS", "").split(",") if s.strip()]
        assert seeds and set(seeds) <= set(nodes), (
            f"{name}: CASSANDRA_SEEDS {seeds} must name cassandra services"
        )
        assert (
            "cqlsh" in healthcheck_words(node)[-1] and "describe keyspaces" in healthcheck_words(node)[-1]
        ), name
        limit = node["deploy"]["resources"]["limits"]["memory"]
        if "MAX_HEAP_SIZE" in env:
            assert "HEAP_NEWSIZE" in env, f"{name}: the cassandra image needs HEAP_NEWSIZE with MAX_HEAP_SIZE"
            assert memory_bytes(env["MAX_HEAP_SIZE"]) < memory_bytes(limit), f"{name}: heap >= memory limit"
    for key in ("CASSANDRA_CLUSTER_NAME", "CASSANDRA_DC", "CASSANDRA_SEEDS"):
        values = {envs[name].get(key) for name in nodes}
        assert len(values) == 1 and None not in values, f"{key} differs between the nodes: {values}"
    for previous, node in zip(CASSANDRA_NODES, CASSANDRA_NODES[1:], strict=False):
        assert depends_on(nodes[node]).get(previous) == "service_healthy", (
            f"{node} must start after {previous} is healthy (one node joins at a time)"
        )


def airflow_env() -> dict[str, dict[str, str]]:
    return {name: environment(services()[name]) for name in services() if name.startswith("airflow-")}


def test_airflow_services_share_one_image_and_configuration():
    svc = services()
    builds = {name: build_of(svc[name]) for name in svc if name.startswith("airflow-")}
    assert set(builds) >= AIRFLOW_SERVICES
    assert {b[1] if b else None for b in builds.values()} == {DOCKER / "airflow" / "Dockerfile"}, builds
    assert command_words(svc["airflow-apiserver"].get("command")) == ["api-server"]
    assert command_words(svc["airflow-scheduler"].get("command")) == ["scheduler"]
    assert command_words(svc["airflow-dag-processor"].get("command")) == ["dag-processor"]
    init = " ".join(command_words(svc["airflow-init"].get("command")))
    assert "airflow db migrate" in init, "airflow-init must run `airflow db migrate`"
    assert is_one_shot(svc["airflow-init"]), "airflow-init runs once (restart: 'no')"

    envs = airflow_env()
    api_port = next(c for _, _, c, _ in published(svc["airflow-apiserver"]))
    for key in (
        "AIRFLOW__CORE__EXECUTOR",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__CORE__FERNET_KEY",
    ):
        values = {name: env.get(key) for name, env in envs.items()}
        assert None not in values.values(), (
            f"{key} is missing in {[n for n, v in values.items() if v is None]}"
        )
        assert len(set(values.values())) == 1, f"{key} must be identical in every Airflow component"
    env = envs["airflow-scheduler"]
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"http://airflow-apiserver:{api_port}/execution/"
    db = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert db.hostname == "postgres" and db.path == "/airflow", "Airflow's metadata DB is postgres/airflow"
    assert env["AIRFLOW__CORE__EXECUTOR"] in {"LocalExecutor", "CeleryExecutor", "KubernetesExecutor"}


def database_urls() -> dict[str, str]:
    return {
        "airflow": airflow_env()["airflow-scheduler"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        "mlflow": environment(services()["mlflow"])["MLFLOW_BACKEND_STORE_URI"],
    }


def test_postgres_init_creates_the_databases_the_services_use():
    postgres = services()["postgres"]
    scripts = [
        DOCKER / source
        for source, target, _ in volume_mounts(postgres)
        if target.startswith("/docker-entrypoint-initdb.d")
    ]
    assert scripts, "no init script is mounted into /docker-entrypoint-initdb.d"
    text = "\n".join(s.read_text() for s in scripts)
    for app, url in database_urls().items():
        parts = urlsplit(url)
        assert parts.hostname == "postgres", f"{app}'s database URL does not point at the postgres service"
        database = parts.path.lstrip("/")
        assert re.search(rf"CREATE DATABASE {database}\b", text), (
            f"the init script does not create {database}"
        )
        assert re.search(rf"CREATE (ROLE|USER) {parts.username}\b", text), f"no role {parts.username} created"
    needed = {m.group(1) for m in re.finditer(r"\$\{([A-Z_][A-Z0-9_]*):\?", text)}
    missing = needed - set(environment(postgres))
    assert not missing, f"the init script needs {sorted(missing)} in the postgres service's environment"


def test_mlflow_serves_artifacts_from_a_volume_and_accepts_its_service_name():
    mlflow = services()["mlflow"]
    words = command_words(mlflow.get("command"))
    assert "--serve-artifacts" in words
    destination = next((w.split("=", 1)[1] for w in words if w.startswith("--artifacts-destination=")), None)
    assert destination, "mlflow needs --artifacts-destination=<path>"
    assert destination in {t for _, t, _ in volume_mounts(mlflow)}, "the artifact root must be a volume"
    assert urlsplit(database_urls()["mlflow"]).scheme.startswith("postgresql")
    # MLflow rejects Host headers it does not know; clients in the network send the tracking URI's host:port.
    netloc = urlsplit(cluster_profile()["mlflow"]["tracking_uri"]).netloc
    allowed = next((w.split("=", 1)[1] for w in words if w.startswith("--allowed-hosts=")), "")
    patterns = [p for p in allowed.split(",") if p]
    assert any(fnmatch.fnmatch(netloc, p) if "*" in p else p == netloc for p in patterns), (
        f"mlflow --allowed-hosts must accept {netloc!r} (the cluster profile's tracking URI)"
    )


def test_cluster_profile_points_at_the_compose_services():
    profile, svc = cluster_profile(), services()

    def listens(name: str, port: int, what: str) -> None:
        assert name in svc, f"{what}: config/cluster.yaml names host {name!r}, which is no compose service"
        assert port in declared_ports(svc[name]), f"{what}: {name} does not listen on {port}"

    master = urlsplit(profile["spark"]["master"])
    listens(master.hostname, master.port, "spark.master")
    cassandra = profile["cassandra"]
    for host in cassandra["contact_points"]:
        listens(host, cassandra["port"], "cassandra.contact_points")
        assert environment(svc[host]).get("CASSANDRA_DC") == cassandra["local_dc"], (
            f"cassandra.local_dc {cassandra['local_dc']!r} is not {host}'s CASSANDRA_DC"
        )
    assert cassandra["replication_factor"] <= len(CASSANDRA_NODES), "replication factor > number of nodes"
    tracking = urlsplit(profile["mlflow"]["tracking_uri"])
    listens(tracking.hostname, tracking.port, "mlflow.tracking_uri")
    triton = profile["triton"]
    for key in ("http_port", "grpc_port", "metrics_port"):
        listens(triton["host"], triton[key], f"triton.{key}")
    listens(profile["airflow"]["host"], profile["airflow"]["port"], "airflow")
    api_ports = {c for _, _, c, _ in published(svc["api"])}
    assert profile["api"]["port"] in api_ports, (
        f"api publishes {api_ports}, the profile says {profile['api']}"
    )
    listens("api", profile["api"]["port"], "api.port")


def mount_source(service: str, target: str) -> str | None:
    return next((s for s, t, _ in volume_mounts(services()[service]) if t == target), None)


def test_shared_volumes_connect_writers_and_readers():
    profile = cluster_profile()
    lake = profile["lake"]["root"]
    driver, executor = mount_source("airflow-scheduler", lake), mount_source("spark-worker", lake)
    assert driver and driver == executor, f"{lake} must be the same volume on the scheduler and the workers"
    triton = services()["triton"]
    staged = image_stage(triton)
    words = command_words(triton.get("command")) or (
        staged[0].last(staged[1], "CMD").words() if staged else []
    )
    repository = next(w.split("=", 1)[1] for w in words if w.startswith("--model-repository="))
    served = mount_source("triton", repository)
    assert served, f"triton's --model-repository {repository} is not a mounted volume"
    written = f"{profile['home'].rstrip('/')}/triton/models"  # pipelines.config: <home>/triton/models
    assert mount_source("airflow-scheduler", written) == served, (
        f"the scheduler must mount volume {served} at {written} (where the profile writes models)"
    )


def test_triton_runs_atelier_python_backend_models():
    """pipelines/deploy writes python-backend models (numpy, xgboost) and loads them through the
    repository API, which Triton only accepts with explicit model control."""
    serving = parse_dockerfile(DOCKER / "serving" / "Dockerfile")
    stage = serving.stage("triton")
    words = command_words(services()["triton"].get("command")) or serving.last(stage, "CMD").words()
    assert "--model-control-mode=explicit" in words, f"triton must use explicit model control: {words}"
    runs = " ".join(i.body for i in stage.instructions if i.keyword == "RUN")
    assert re.search(
        r"pip install [^&]*-c \S*constraints/serving\.txt[^&]*\bnumpy\b[^&]*\bxgboost\b", runs
    ), "the triton image must install the models' runtime (numpy, xgboost) with constraints/serving.txt"
    assert "backends/python" in runs, "the build must check that the python backend is present"


def test_api_service():
    api = services()["api"]
    staged = image_stage(api)
    assert staged, "api must be built from docker/serving"
    dockerfile, stage = staged
    cmd = command_words(api.get("command")) or dockerfile.last(stage, "CMD").words()
    assert cmd[:2] == ["atelier", "serve"], f"the api runs `atelier serve`, not {cmd}"
    raw_env = environment(compose_raw()["services"]["api"])
    assert SECRET_REFERENCE.match(raw_env.get("ATELIER_API_TOKEN", "")), (
        "ATELIER_API_TOKEN must come from .env"
    )
    profile_env = environment(api).get("ATELIER_PROFILE") or next(
        (w.split("=", 1)[1] for i in stage.instructions if i.keyword == "ENV" for w in i.body.split()
         if w.startswith("ATELIER_PROFILE=")),
        None,
    )  # fmt: skip
    assert profile_env == "cluster"
    deps = depends_on(api)
    assert deps.get("triton") == "service_healthy"
    assert all(deps.get(n) == "service_healthy" for n in CASSANDRA_NODES), "api waits for Cassandra"


def test_readme_names_the_services_and_the_bring_up_command():
    text = (DOCKER / "README.md").read_text()
    assert "cp docker/.env.example docker/.env" in text
    assert "docker compose -f docker/compose.yaml up -d" in text
    missing = [name for name in services() if f"`{name}`" not in text]
    assert not missing, f"docker/README.md does not mention {missing}"


# --------------------------------------------------------------------------------------------------------
# Dockerfiles
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", all_dockerfiles(), ids=case_id)
def test_dockerfile_parses_with_from_first(dockerfile: Path):
    parsed = parse_dockerfile(dockerfile)
    first = next(i for i in parsed.instructions if i.keyword != "ARG")
    assert first.keyword == "FROM", f"{rel(dockerfile)}: the first non-ARG instruction is {first.keyword}"


@pytest.mark.parametrize("dockerfile", all_dockerfiles(), ids=case_id)
def test_dockerfile(dockerfile: Path):
    """COPY sources exist, no remote ADD, final/target stages are non-root, no secrets, pinned installs."""
    context, targets = build_context(dockerfile)
    problems = dockerfile_problems(dockerfile, context, targets)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("dockerfile", all_dockerfiles(), ids=case_id)
def test_dockerignore_keeps_state_and_secrets_out_of_the_context(dockerfile: Path):
    patterns = dockerignore_patterns(dockerfile, build_context(dockerfile)[0])
    for path in (
        ".venv/lib/site.py",
        ".atelier/lake/x.parquet",
        "docker/.env",
        "pipelines/__pycache__/a.pyc",
    ):
        assert is_ignored(path, patterns), f"{rel(dockerfile)}: {path} would be sent to the build context"


def python_minor(image: str) -> str | None:
    match = re.search(r"(?:^python:|-python)(\d+\.\d+)", image)
    return match.group(1) if match else None


def test_images_agree_with_the_project_pins():
    setup = (REPO / "setup.cfg").read_text()
    wanted_python = re.search(r"python_requires\s*=\s*>=\s*(\d+\.\d+)", setup).group(1)
    airflow = parse_dockerfile(DOCKER / "airflow" / "Dockerfile")
    spark = parse_dockerfile(DOCKER / "spark" / "Dockerfile")
    serving = parse_dockerfile(DOCKER / "serving" / "Dockerfile")
    mlflow = parse_dockerfile(DOCKER / "mlflow" / "Dockerfile")

    base = airflow.stages[-1].base
    tag = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python\d+\.\d+", base)
    assert tag, f"docker/airflow must be based on apache/airflow:<version>-python<x.y>, not {base}"
    assert tag.group(1) == pin("apache-airflow"), "the Airflow image tag and constraints/main.txt disagree"
    # The Spark driver (Airflow image) and the executors (Spark image) must run the same Python minor.
    pythons = {
        "airflow": python_minor(base),
        "spark": python_minor(spark.stages[-1].base),
        "api": python_minor(serving.stage("api").base),
        "mlflow": python_minor(mlflow.stages[-1].base),
    }
    assert set(pythons.values()) == {wanted_python}, (
        f"Python versions {pythons}, setup.cfg wants {wanted_python}"
    )

    def java(parsed: Dockerfile) -> set[str]:
        return {
            m
            for i in parsed.instructions
            if i.keyword == "RUN"
            for m in re.findall(r"openjdk-(\d+)-jre", i.body)
        }

    assert java(airflow) == java(spark) and len(java(spark)) == 1, "driver and workers need the same Java"
    assert int(next(iter(java(spark)))) >= 17, "Spark 4 needs Java 17+"
    assert pin("pyspark").startswith("4."), "docker/spark is a Spark 4 image"
    spark_installs = " ".join(i.body for i in spark.instructions if i.keyword == "RUN")
    assert re.search(r"pip install -c \S*constraints/main\.txt[^&]*\bpyspark\b", spark_installs), (
        "the Spark image must install pyspark with the driver's pins (constraints/main.txt)"
    )
    triton = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d)\.(\d\d)-py3", serving.stage("triton").base)
    assert triton, (
        f"the triton target must be nvcr.io/nvidia/tritonserver:<yy.mm>-py3, not {serving.stage('triton').base}"
    )
    release = 12 * int(triton.group(1)) + int(triton.group(2)) - 247  # 22.12 -> 2.29, 26.08 -> 2.73
    client = pin("tritonclient")
    assert client.split(".")[1] == str(release), (
        f"tritonserver {triton.group(1)}.{triton.group(2)} is Triton 2.{release}, tritonclient is {client}"
    )


@pytest.mark.parametrize("script", sorted(DOCKER.rglob("*.sh")), ids=case_id)
def test_shell_scripts_are_valid_bash(script: Path):
    assert script.read_text().startswith("#!/usr/bin/env bash"), f"{rel(script)} needs a bash shebang"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{rel(script)}: {result.stderr}"


def test_spark_entrypoint_starts_master_or_worker():
    text = (DOCKER / "spark" / "entrypoint.sh").read_text()
    assert "SPARK_ROLE" in text
    assert re.search(r"master\)\s*\n\s*exec spark-class org\.apache\.spark\.deploy\.master\.Master", text)
    assert re.search(r"worker\)\s*\n\s*exec spark-class org\.apache\.spark\.deploy\.worker\.Worker", text)
    assert cluster_profile()["spark"]["master"] in text, "the worker's default master URL is the profile's"
    spark = parse_dockerfile(DOCKER / "spark" / "Dockerfile")
    entry = " ".join(spark.last(spark.stages[-1], "ENTRYPOINT").words())
    assert "spark-entrypoint.sh" in entry
    roles = {environment(services()[n]).get("SPARK_ROLE") for n in ("spark-master", "spark-worker")}
    assert roles == {"master", "worker"}


def test_spark_workers_have_the_drivers_python_path():
    """pipelines.spark.python_env() sends the driver's sys.executable (the Airflow image's venv python) to the
    executors as PYSPARK_PYTHON: the Spark image must provide that path, or every Python task fails to start."""
    airflow = parse_dockerfile(DOCKER / "airflow" / "Dockerfile")
    minor = python_minor(airflow.stages[-1].base)
    spark_runs = " ".join(
        i.body for i in parse_dockerfile(DOCKER / "spark" / "Dockerfile").instructions if i.keyword == "RUN"
    )
    links = re.search(
        r"for name in ([^;]+); do ln -s \S+ \"?/home/airflow/\.local/bin/\$\{name\}", spark_runs
    )
    assert links and {"python", "python3", f"python{minor}"} <= set(links.group(1).split()), (
        "the Spark image must link python, python3 and python<x.y> under /home/airflow/.local/bin"
    )


# --------------------------------------------------------------------------------------------------------
# The checks can fail: each gets a known mistake
# --------------------------------------------------------------------------------------------------------

GOOD_BASE = "FROM python:3.11-slim\n"


@pytest.mark.parametrize(
    ("dockerfile", "expected"),
    [
        (GOOD_BASE + "COPY app.py /app/\n", "sets no USER"),
        (GOOD_BASE + "COPY app.py /app/\nUSER root\n", "non-root"),
        (GOOD_BASE + "USER 0:0\n", "non-root"),
        (GOOD_BASE + "COPY missing/ /app/\nUSER app\n", "does not exist"),
        (GOOD_BASE + "ADD https://example.com/x.tgz /x\nUSER app\n", "remote URL"),
        (GOOD_BASE + "ENV ATELIER_API_TOKEN=abc\nUSER app\n", "secret"),
        (GOOD_BASE + "RUN echo password=hunter2\nUSER app\n", "literal secret"),
        (GOOD_BASE + "RUN pip install requests\nUSER app\n", "unpinned"),
        (GOOD_BASE + "RUN pip install -c constraints/nope.txt requests\nUSER app\n", "does not exist"),
        (GOOD_BASE + "COPY --from=builder /x /x\nUSER app\n", "names no stage"),
        ("RUN true\n" + GOOD_BASE + "USER app\n", "before the first FROM"),
        (GOOD_BASE + "RUN apt-get install \\\n", "continuation"),
        (GOOD_BASE + "COPY app.py /app/\nUSER app\nFROM scratch AS final\n", "sets no USER"),
        (GOOD_BASE + "COPY .venv /venv\nUSER app\n", "excluded by the .dockerignore"),
    ],
)
def test_checks_catch_known_dockerfile_mistakes(tmp_path: Path, dockerfile: str, expected: str):
    (tmp_path / "app.py").write_text("print('hi')\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / "constraints").mkdir()
    (tmp_path / ".dockerignore").write_text(".venv\n")
    path = tmp_path / "Dockerfile"
    path.write_text(dockerfile)
    problems = dockerfile_problems(path, tmp_path)
    assert any(expected in p for p in problems), f"expected a problem containing {expected!r}, got {problems}"
    good = GOOD_BASE + "COPY app.py /app/\nRUN pip install 'requests==2.32.3'\nUSER app\n"
    path.write_text(good)
    assert dockerfile_problems(path, tmp_path) == []


@pytest.mark.parametrize(
    ("compose_text", "check", "expected"),
    [
        (
            "services:\n a: {ports: ['8080:80']}\n b: {ports: ['127.0.0.1:8080:81']}\n",
            "ports",
            "published by both",
        ),
        ("services:\n a: {ports: ['70000:80']}\n", "ports", "out of range"),
        ("services:\n a: {depends_on: [b]}\n", "depends", "not a service"),
        (
            "services:\n a: {depends_on: {b: {condition: service_healthy}}}\n b: {}\n",
            "depends",
            "no healthcheck",
        ),
        ("services:\n a: {depends_on: [b]}\n b: {depends_on: [a]}\n", "depends", "cycle"),
        ("services:\n a: {environment: {X: '${UNDEFINED}'}}\n", "vars", "neither defined"),
        ("services:\n a: {environment: {DB_PASSWORD: '${DB_PASSWORD:-hunter2}'}}\n", "secrets", "reference"),
        ("services:\n a: {environment: {API_TOKEN: abc}}\n", "secrets", "reference"),
        ("services:\n a: {environment: {URL: 'postgresql://u:pw@db/x'}}\n", "secrets", "literal password"),
        ("services:\n a: {env_file: [missing.env]}\n", "env_file", "does not exist"),
        ("services:\n a: {env_file: [.env]}\n", "env_file", "required: false"),
    ],
)
def test_checks_catch_known_compose_mistakes(tmp_path: Path, compose_text: str, check: str, expected: str):
    (tmp_path / ".env.example").write_text("USED=1\n")
    data = yaml.safe_load(compose_text)
    run = {
        "ports": lambda: port_problems(data["services"]),
        "depends": lambda: depends_on_problems(data["services"]),
        "vars": lambda: compose_variable_problems(compose_text, {}),
        "secrets": lambda: compose_secret_problems(data),
        "env_file": lambda: env_file_problems(data["services"], tmp_path),
    }[check]
    problems = run()
    assert any(expected in p for p in problems), f"expected a problem containing {expected!r}, got {problems}"


def test_dockerignore_matching():
    patterns = ["**/.venv", "docker/.env", "**/*.pyc", "build", "!build/keep"]
    assert is_ignored(".venv/bin/python", patterns)
    assert is_ignored("sub/.venv", patterns)
    assert is_ignored("docker/.env", patterns)
    assert not is_ignored("docker/.env.example", patterns)
    assert is_ignored("a/b/c.pyc", patterns)
    assert not is_ignored("pipelines/config.py", patterns)
    assert not is_ignored("build/keep", patterns)
