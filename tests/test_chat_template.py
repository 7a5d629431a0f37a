"""Chat templates: the built-in ones render what the model families were tuned on, a GGUF file's
own template wins, and an untrusted template cannot reach Python internals."""

import pytest

from edgellm.chat_template import BUILTIN, ChatTemplate, builtin_name, template_for
from edgellm.errors import EdgeLLMError

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!\n"},
    {"role": "user", "content": "Bye"},
]


def render(name, messages=CONVERSATION, bos="<bos>"):
    return ChatTemplate(BUILTIN[name], name, bos_token=bos).render(messages)


def test_gemma_puts_the_system_prompt_in_the_first_user_turn():
    assert render("gemma") == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n")


def test_llama3_headers():
    assert render("llama3", bos="<|begin_of_text|>") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_chatml():
    assert render("chatml", CONVERSATION[:2]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_builtin_choice_by_family():
    assert builtin_name("gemma3", lambda t: False) == "gemma"
    assert builtin_name("llama", lambda t: t in ("<|start_header_id|>", "<|eot_id|>")) == "llama3"
    assert builtin_name("qwen2", lambda t: t == "<|im_start|>") == "chatml"


def test_the_bundled_gemma_uses_the_builtin_template(llm):
    template = template_for(llm.gguf.metadata, llm.gguf.architecture, llm.tokenizer)
    assert template.name == "built-in gemma" and template.bos_token == "<bos>"


def test_a_template_in_the_file_wins(llm):
    metadata = {"tokenizer.chat_template": "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
                                           "{% if add_generation_prompt %}[assistant]{% endif %}"}
    template = template_for(metadata, "gemma3", llm.tokenizer)
    assert template.render(CONVERSATION[1:2]) == "[user] Hi\n[assistant]"


@pytest.mark.parametrize("source", [
    "{{ messages.__class__.__mro__[1].__subclasses__() }}",  # the classic escape to os.system
    "{{ ''.__class__.__base__ }}",
    "{% set _ = messages.append({'role': 'user', 'content': 'x'}) %}",  # the immutable sandbox
])
def test_untrusted_templates_cannot_reach_python(source):
    with pytest.raises(EdgeLLMError, match="chat template"):
        ChatTemplate(source, "hostile").render(CONVERSATION)


def test_raise_exception_becomes_an_error():
    source = "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    with pytest.raises(EdgeLLMError, match="no system role"):
        ChatTemplate(source, "strict").render(CONVERSATION)


def test_a_broken_template_is_an_error():
    with pytest.raises(EdgeLLMError, match="chat template"):
        ChatTemplate("{% for m in messages %}", "broken")
