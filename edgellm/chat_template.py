"""Chat templates: a conversation [{"role", "content"}, ...] -> the prompt text a model was tuned on.

A GGUF file may carry its Hugging Face template as `tokenizer.chat_template`, a Jinja program.
It comes from whoever made the file, so it runs in jinja2's immutable sandbox (no attribute
access to Python internals, no mutation of our objects), as transformers does. Files without one
get a built-in template chosen from the architecture and vocabulary (llama.cpp falls back the
same way): Gemma's turns, Llama 3's headers, or ChatML for everything else.
"""

from __future__ import annotations

from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgellm.errors import EdgeLLMError

# Gemma has no system role: the system text opens the first user turn (as Gemma 3's own template).
GEMMA = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] | trim ~ '\\n\\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ first_user_prefix if loop.first else '' }}"
    "{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

CHATML = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

BUILTIN = {"gemma": GEMMA, "llama3": LLAMA3, "chatml": CHATML}


def _raise_exception(message):
    raise jinja2.TemplateError(message)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    # transformers' settings, so that templates written for it render the same way
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    return env


class ChatTemplate:
    """A compiled template plus the special-token strings it may refer to."""

    def __init__(self, source: str, name: str, bos_token: str = "", eos_token: str = ""):
        self.source, self.name = source, name
        self.bos_token, self.eos_token = bos_token, eos_token
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateError as e:
            raise EdgeLLMError(f"chat template {name}: {e}") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise EdgeLLMError(f"a message is a dict with string 'role' and 'content', got {m!r}")
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token,
            )
        except jinja2.TemplateError as e:  # SecurityError is one too
            raise EdgeLLMError(f"chat template {self.name}: {e}") from None


def builtin_name(arch: str, has_token) -> str:
    """The built-in template for a file without one; has_token(text) says whether the vocabulary
    holds text as one special token."""
    if arch.startswith("gemma"):
        return "gemma"
    if has_token("<|start_header_id|>") and has_token("<|eot_id|>"):
        return "llama3"
    return "chatml"


def template_for(metadata, arch: str, tokenizer) -> ChatTemplate:
    """The file's own template if it has one, else the built-in one for its family."""

    def token_text(token_id):
        if token_id is None:
            return ""
        return tokenizer.token_bytes(token_id, special=True).decode("utf-8", "replace")

    def has_token(text):
        return len(tokenizer.encode(text, bos=False, special=True)) == 1

    bos, eos = token_text(tokenizer.bos_id), token_text(tokenizer.eos_id)
    source = metadata.get("tokenizer.chat_template")
    if isinstance(source, str) and source.strip():
        return ChatTemplate(source, "from the GGUF file", bos, eos)
    name = builtin_name(arch, has_token)
    return ChatTemplate(BUILTIN[name], f"built-in {name}", bos, eos)
