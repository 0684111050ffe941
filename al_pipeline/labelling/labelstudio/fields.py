"""[labelling] The names this project gives things in Label Studio, in one place: the
labelling interface, the task data keys, the round's tab and the webhook's events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import quoteattr

CONTROL = "label"
OBJECT = "image"
# Task data keys: the item a task shows and the round that queued it.
ITEM_KEY = "al_item"
ROUND_KEY = "al_round"
ROUND_TAB_SUFFIX = " · least confident first"
WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")


def label_config(classes: Sequence[str]) -> str:
    """Image plus one single-choice question over the classes."""
    choices = "".join(f"<Choice value={quoteattr(c)}/>" for c in classes)
    return (
        f'<View><Image name="{OBJECT}" value="$image"/>'
        f'<Choices name="{CONTROL}" toName="{OBJECT}" choice="single" showInline="true">'
        f"{choices}</Choices></View>"
    )


def config_classes(config: str) -> list[str]:
    """The choices of :func:`label_config`'s question in a labelling config (none when the
    config has no such question)."""
    try:
        root = ElementTree.fromstring(config)
    except ElementTree.ParseError:
        return []
    return [
        str(choice.get("value"))
        for question in root.iter("Choices")
        if question.get("name") == CONTROL
        for choice in question.iter("Choice")
    ]


def choice_result(choice: str) -> list[dict[str, Any]]:
    """The result a prediction or annotation carries for one chosen class."""
    return [
        {"from_name": CONTROL, "to_name": OBJECT, "type": "choices", "value": {"choices": [choice]}}
    ]
