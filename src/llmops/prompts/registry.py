"""Versioned prompts: a folder of templates, `<id>/<version>.yaml`, each a list of chat messages whose
contents are Jinja2 templates over named variables:

    description: Answer a support question
    variables: [product, question]
    messages:
      - {role: system, content: "You support users of {{ product }}. Be brief."}
      - {role: user, content: "{{ question }}"}

`llmops prompts publish DIR` records each new version's SHA-256 in DIR/published.json. The server serves
published versions only and refuses to start if one changed after publication: a published version never
changes, a new text is a new version. A request references `{"id", "version", "variables"}`; without a
version it gets the latest, or one picked by the prompt's experiment (weighted, sticky per key)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from llmops.errors import ConfigError, InvalidRequest

log = logging.getLogger("llmops.prompts")
LOCK = "published.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class PromptVersion:
    id: str
    version: str
    variables: tuple[str, ...]
    messages: tuple[tuple[str, str], ...]  # (role, template)


def _sort_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def _files(folder: Path) -> dict[tuple[str, str], Path]:
    out = {}
    for file in sorted(folder.glob("*/*.yaml")):
        prompt_id, version = file.parent.name, file.stem
        if _NAME.match(prompt_id) and _NAME.match(version):
            out[(prompt_id, version)] = file
    return out


def digest(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def read_lock(folder: Path) -> dict[str, dict[str, str]]:
    lock = folder / LOCK
    return json.loads(lock.read_text()) if lock.exists() else {}


def publish(folder: Path) -> list[str]:
    """Record every new version; refuse if a published one changed or vanished. Returns the new ones."""
    lock, files = read_lock(folder), _files(folder)
    _verify(lock, files)
    added = []
    for (prompt_id, version), file in files.items():
        if version not in lock.get(prompt_id, {}):
            _parse(prompt_id, version, file)  # a broken template is never published
            lock.setdefault(prompt_id, {})[version] = digest(file)
            added.append(f"{prompt_id}/{version}")
    (folder / LOCK).write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    return added


def _verify(lock: dict[str, dict[str, str]], files: dict[tuple[str, str], Path]) -> None:
    for prompt_id, versions in lock.items():
        for version, expected in versions.items():
            file = files.get((prompt_id, version))
            if file is None:
                raise ConfigError(f"published prompt {prompt_id}/{version} is missing")
            if digest(file) != expected:
                raise ConfigError(f"published prompt {prompt_id}/{version} changed after publication; "
                                  "publish the new text as a new version")


def _parse(prompt_id: str, version: str, file: Path) -> PromptVersion:
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        messages = tuple((str(m["role"]), str(m["content"])) for m in data["messages"])
        env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        for _, template in messages:
            env.parse(template)
    except (yaml.YAMLError, KeyError, TypeError, TemplateError) as exc:
        raise ConfigError(f"prompt {prompt_id}/{version} ({file}) is invalid: {exc}") from exc
    return PromptVersion(prompt_id, version, tuple(data.get("variables") or ()), messages)


class PromptRegistry:
    def __init__(self, folder: str | None) -> None:
        self._versions: dict[str, dict[str, PromptVersion]] = {}
        self._env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        if folder is None:
            return
        root = Path(folder).expanduser()
        lock, files = read_lock(root), _files(root)
        _verify(lock, files)
        for (prompt_id, version), file in files.items():
            if version in lock.get(prompt_id, {}):
                self._versions.setdefault(prompt_id, {})[version] = _parse(prompt_id, version, file)
            else:
                log.warning("prompt %s/%s is not published (llmops prompts publish): not served", prompt_id, version)

    def versions(self, prompt_id: str) -> list[str]:
        return sorted(self._versions.get(prompt_id, {}), key=_sort_key)

    def get(self, prompt_id: str, version: str | None) -> PromptVersion:
        versions = self._versions.get(prompt_id)
        if not versions:
            raise InvalidRequest(f"no published prompt {prompt_id!r}", param="prompt.id")
        chosen = version or self.versions(prompt_id)[-1]
        if chosen not in versions:
            raise InvalidRequest(f"prompt {prompt_id!r} has no published version {chosen!r}; published: "
                                 f"{', '.join(self.versions(prompt_id))}", param="prompt.version")
        return versions[chosen]

    def render(self, prompt: PromptVersion, variables: dict[str, Any]) -> list[tuple[str, str]]:
        missing = [v for v in prompt.variables if v not in variables]
        unknown = [v for v in variables if v not in prompt.variables]
        if missing or unknown:
            problem = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"
            raise InvalidRequest(f"prompt {prompt.id}/{prompt.version} variables: {problem}",
                                 param="prompt.variables")
        try:
            return [(role, self._env.from_string(t).render(**variables)) for role, t in prompt.messages]
        except TemplateError as exc:
            raise InvalidRequest(f"prompt {prompt.id}/{prompt.version} cannot be rendered: {exc}",
                                 param="prompt.variables") from exc
