"""Captions of the built-in scenes: a regular, parseable function of the scene description.

Grammar (lower case; entities left to right, as they appear in the image):

    caption  := entities ". " relations "."
    entities := entity (", " entity)* " and " entity     (or a single entity)
    entity   := "a " SIZE " " COLOR " " KIND " at the " DEPTH " " SIDE
    relations:= relation (", " relation)*
    relation := "the " COLOR " " KIND " is " REL " the " COLOR " " KIND
              | "the " COLOR " " KIND " is in front of the wall"      (single entity)

SIZE in SIZE_NAMES, COLOR in COLOR_NAMES, KIND in KIND_NAMES ("person" for stick figures),
DEPTH in ("front", "back"), SIDE in ("left", "center", "right"), REL in RELATIONS.
Example: "a large red sphere at the front left and a small blue box at the back center. the red
sphere is left of the blue box."

Colours are unique within a scene, so "the <color> <kind>" names exactly one entity. Relations
link each entity to its right-hand neighbour: "left of", unless the two are nearly in line
(image centres closer than `INLINE_GAP` of the width); then "in front of" / "behind".
Only entities that are visible in the image are described (the renderer guarantees that every
entity of a scene is at least half visible).
"""

from __future__ import annotations

import re

from m4.data.scene_layout import COLOR_NAMES, KIND_NAMES, SIZE_NAMES

DEPTH_NAMES: tuple[str, ...] = ("front", "back")
SIDE_NAMES: tuple[str, ...] = ("left", "center", "right")
RELATIONS: tuple[str, ...] = ("left of", "in front of", "behind")
INLINE_GAP = 0.08


def side_of(u: float) -> str:
    """Coarse horizontal position from a normalised image x in [0, 1]."""
    return SIDE_NAMES[0] if u < 1 / 3 else SIDE_NAMES[1] if u < 2 / 3 else SIDE_NAMES[2]


def describe(objects: list[dict]) -> str:
    """Caption of scene objects (dicts with color, size, kind, depth, side, u, z), sorted
    left to right by `u` (normalised image x of the object's anchor)."""
    if not objects:
        raise ValueError("describe: a scene caption needs at least one object, got none")
    objects = sorted(objects, key=lambda o: o["u"])
    phrases = [f"a {o['size']} {o['color']} {o['kind']} at the {o['depth']} {o['side']}"
               for o in objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    name = lambda o: f"the {o['color']} {o['kind']}"  # noqa: E731
    if len(objects) == 1:
        relations = [f"{name(objects[0])} is in front of the wall"]
    else:
        relations = [f"{name(a)} is {relation(a, b)} {name(b)}"
                     for a, b in zip(objects, objects[1:])]
    return f"{listed}. {', '.join(relations)}."


def relation(a: dict, b: dict) -> str:
    """The relation of a to its right-hand neighbour b."""
    if b["u"] - a["u"] >= INLINE_GAP:
        return "left of"
    return "in front of" if a["z"] < b["z"] else "behind"


_WORD = lambda names: "(" + "|".join(re.escape(n) for n in names) + ")"  # noqa: E731
_ENTITY = re.compile(
    rf"\ba {_WORD(SIZE_NAMES)} {_WORD(COLOR_NAMES)} {_WORD(KIND_NAMES)} "
    rf"at the {_WORD(DEPTH_NAMES)} {_WORD(SIDE_NAMES)}\b")
_RELATION = re.compile(
    rf"\bthe {_WORD(COLOR_NAMES)} {_WORD(KIND_NAMES)} is {_WORD(RELATIONS)} "
    rf"the (?:{_WORD(COLOR_NAMES)} {_WORD(KIND_NAMES)}|(wall))\b")


def parse(caption: str) -> dict:
    """Read a caption back: {"objects": [{size, color, kind, depth, side}], "relations":
    [(color, kind, relation, color, kind) or (color, kind, "in front of", "wall", None)]}.

    Tolerant by design (it scores generated captions): phrases that do not follow the grammar
    are skipped, never an error.
    """
    objects = [dict(zip(("size", "color", "kind", "depth", "side"), m.groups()))
               for m in _ENTITY.finditer(caption)]
    relations = []
    for m in _RELATION.finditer(caption):
        c1, k1, rel, c2, k2, wall = m.groups()
        relations.append((c1, k1, rel, "wall", None) if wall else (c1, k1, rel, c2, k2))
    return {"objects": objects, "relations": relations}
