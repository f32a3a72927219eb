"""A small kustomize renderer for the features deploy/k8s uses (resources, namespace, labels, images,
strategic-merge patches keyed by kind and name, lists of named items merged by name, `null` deleting a field,
`$patch: delete` deleting the object). Used where kubectl is
absent; where it is present, tests render with `kubectl kustomize` instead."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = _merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(
            isinstance(x, dict) and "name" in x for x in base + patch):
        out_list = [copy.deepcopy(x) for x in base]
        for item in patch:
            match = next((i for i, x in enumerate(out_list) if x["name"] == item["name"]), None)
            if match is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[match] = _merge(out_list[match], item)
        return out_list
    return copy.deepcopy(patch)


def _key(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _images(obj: Any, images: list[Obj]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "image" and isinstance(v, str):
                for img in images:
                    if v.split(":")[0] == img["name"].split(":")[0] and (":" not in img["name"] or v == img["name"]):
                        obj[k] = f"{img.get('newName', v.split(':')[0])}:{img.get('newTag', 'latest')}"
            else:
                _images(v, images)
    elif isinstance(obj, list):
        for x in obj:
            _images(x, images)


def render(folder: Path) -> list[Obj]:
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objs: list[Obj] = []
    for res in k.get("resources", []):
        path = folder / res
        objs += render(path) if path.is_dir() else [o for o in yaml.safe_load_all(path.read_text()) if o]
    for patch in k.get("patches", []):
        p = yaml.safe_load((folder / patch["path"]).read_text())
        index = next(i for i, o in enumerate(objs) if _key(o) == _key(p))
        if p.pop("$patch", None) == "delete":
            del objs[index]
        else:
            objs[index] = _merge(objs[index], p)
    for obj in objs:
        if "namespace" in k and obj["kind"] != "Namespace":
            obj["metadata"]["namespace"] = k["namespace"]
        for label in k.get("labels", []):
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
        _images(obj, k.get("images", []))
    return objs
