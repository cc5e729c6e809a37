"""Chat templates and stop tokens per family, kept as data (they go into the exported bundle as JSON)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mcpm.errors import McpmError


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    roles: dict[str, str]  # role -> format of one message, with {content}
    generation_prompt: str  # appended to start the assistant's reply
    add_bos: bool  # prepend <s> to the whole conversation
    stop: tuple[str, ...]  # token strings that end the assistant's reply

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Text of a conversation (BOS is added by the tokenizer when ``add_bos``)."""
        parts = []
        for message in messages:
            role = message.get("role", "")
            if role not in self.roles:
                raise McpmError(f"chat template {self.name!r} has no role {role!r}", f"use one of {sorted(self.roles)}")
            parts.append(self.roles[role].format(content=message["content"].strip()))
        if add_generation_prompt:
            parts.append(self.generation_prompt)
        return "".join(parts)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["stop"] = list(self.stop)
        return data

    def jinja(self) -> str:
        """The same template in the Jinja form transformers' tokenizer_config.json uses."""
        branches = []
        for i, (role, fmt) in enumerate(self.roles.items()):
            keyword = "if" if i == 0 else "elif"
            before, after = fmt.split("{content}")
            branches.append(
                f"{{% {keyword} message['role'] == '{role}' %}}"
                f"{{{{{before!r} + message['content'].strip() + {after!r}}}}}"
            )
        body = "".join(branches) + "{% endif %}"
        gen = f"{{% if add_generation_prompt %}}{{{{{self.generation_prompt!r}}}}}{{% endif %}}"
        return f"{{% for message in messages %}}{body}{{% endfor %}}{gen}"


TEMPLATES: dict[str, ChatTemplate] = {
    # MiniCPM 1B/2B/2B-128k/MoE and the LM of MiniCPM-V 1.0/2.0: "<用户>{q}<AI>" after <s>
    "minicpm": ChatTemplate(
        name="minicpm",
        roles={"system": "{content}", "user": "<用户>{content}", "assistant": "<AI>{content}"},
        generation_prompt="<AI>",
        add_bos=True,
        stop=("</s>",),
    ),
    # MiniCPM3/4: ChatML
    "chatml": ChatTemplate(
        name="chatml",
        roles={
            "system": "<|im_start|>system\n{content}<|im_end|>\n",
            "user": "<|im_start|>user\n{content}<|im_end|>\n",
            "assistant": "<|im_start|>assistant\n{content}<|im_end|>\n",
        },
        generation_prompt="<|im_start|>assistant\n",
        add_bos=True,
        stop=("<|im_end|>", "</s>"),
    ),
}


def get_template(name: str) -> ChatTemplate:
    if name not in TEMPLATES:
        raise McpmError(f"unknown chat template {name!r}", f"use one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]
