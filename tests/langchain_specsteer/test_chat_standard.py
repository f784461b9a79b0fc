"""LangChain's standard chat-model tests (`langchain-tests`) on ChatSpecSteer.

Unit tests run on the tiny random pair; integration tests on the shipped trained demo pair,
which writes real text. No test is marked xfail. Every skip (35 with langchain-tests 1.1.9)
is decided by langchain-tests from the capabilities declared below; why each is absent:

- tool calling (test_bind_tool_pydantic, test_tool_calling[_async], ..._with_no_arguments,
  test_tool_choice, test_tool_message_*, test_bind_runnables_as_tools, test_agent_loop,
  test_unicode_tool_call_integration, test_structured_few_shot_examples): the generalist
  verifies free text drafted by a specialist; there is no tool-call grammar to verify.
- structured output and JSON mode (test_with_structured_output, test_structured_output*,
  test_json_mode): they are built on tool calling / constrained decoding, neither of which
  the draft-verify loop provides.
- image, audio, PDF and Anthropic-format inputs: both models are text-only.
- per-call `model=` override: the models are objects loaded at construction.
- test_serdes: a model holding loaded weights is not LangChain-serialisable.
- test_init_from_env: no environment configuration (no API key for in-process models).
- test_stream_time: langchain-tests runs it only with VCR cassettes (HTTP recordings).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

import langchain_specsteer
from langchain_specsteer import ChatSpecSteer, LocalGeneralist, LocalSpecialist


@cache
def tiny_models():
    from langchain_specsteer.tiny import tiny_pair

    return tiny_pair(seed=0)


@cache
def demo_models():
    root = Path(langchain_specsteer.__file__).parent / "demo_pair"
    return (
        LocalSpecialist.from_pretrained(str(root / "specialist"), device="cpu"),
        LocalGeneralist.from_pretrained(str(root / "generalist"), device="cpu"),
    )


class Declared:
    """What ChatSpecSteer supports, as langchain-tests asks."""

    @property
    def chat_model_class(self) -> type[ChatSpecSteer]:
        return ChatSpecSteer

    @property
    def standard_chat_model_params(self) -> dict:
        # The standard set also has timeout, max_retries and api_key: they configure the
        # network client of a remote generalist (RemoteGeneralist, OpenAICompatibleGeneralist),
        # not the chat model, whose in-process models take none of them.
        return {"temperature": 0, "max_tokens": self.max_tokens, "stop": []}

    @property
    def supports_model_override(self) -> bool:
        # The models are loaded objects given at construction; a per-call `model=` name
        # cannot swap them.
        return False

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestChatSpecSteerUnit(Declared, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict:
        specialist, generalist = tiny_models()
        return {"specialist": specialist, "generalist": generalist}

    max_tokens = 16


class TestChatSpecSteerIntegration(Declared, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict:
        specialist, generalist = demo_models()
        return {"specialist": specialist, "generalist": generalist}

    max_tokens = 24
