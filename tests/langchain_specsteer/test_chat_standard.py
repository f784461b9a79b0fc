"""LangChain's standard chat-model tests (`langchain-tests`) on ChatSpecSteer.

Unit tests run on the tiny random pair; integration tests on the shipped trained demo pair,
which writes real text. No unit test is marked xfail; 11 integration tests the demo pair
cannot pass (17 cases with their parameters) are marked xfail(strict), each with its reason
in `BEYOND_THE_DEMO_PAIR` below. Every skip is decided by langchain-tests from the
capabilities declared below; why each is absent:

- tool calling and structured output: declared (`bind_tools`, `with_structured_output` on
  top of it). The unit tests run on the tiny pair (binding, schemas); the integration tests
  on the shipped pair, which was trained to call the tools of its world (memory, weather,
  currency, timer, ...) in its `specsteer` format (docs/results.md, 'Assistant
  fine-tuning'). The ones in `BEYOND_THE_DEMO_PAIR` fail, each for the reason given there:
  they are marked xfail(strict), so one that starts to pass fails the suite until it is
  taken off the list. tests/langchain_specsteer/test_chat_models.py tests parsing, forcing
  and structured output on scripted replies, whatever a model writes.
- JSON mode: no constrained decoding in the draft-verify loop.
- image, audio, PDF and Anthropic-format inputs: both models are text-only.
- per-call `model=` override: the models are objects loaded at construction.
- test_serdes: a model holding loaded weights is not LangChain-serialisable.
- test_init_from_env: no environment configuration (no API key for in-process models).
- test_stream_time: langchain-tests runs it only with VCR cassettes (HTTP recordings).
"""

from __future__ import annotations

import functools
from functools import cache
from pathlib import Path

import pytest
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


@cache
def demo_tool_trained() -> bool:
    """Whether the shipped demo pair was trained to call tools (its template's format)."""
    specialist, generalist = demo_models()
    return ChatSpecSteer(specialist=specialist, generalist=generalist).tool_family() != "plain"


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
    def tool_choice_value(self) -> str:
        return "any"

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
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True  # through tool calling (`with_structured_output`'s default)

    @property
    def chat_model_params(self) -> dict:
        specialist, generalist = tiny_models()
        return {"specialist": specialist, "generalist": generalist}

    max_tokens = 16


# The 13 M-parameter demo generalist and 0.6 M specialist learned six tools' names and
# arguments from 3,810 episodes; they do not copy an unseen tool's name or argument values
# reliably (docs/results.md shows its calls). A test that needs that fails with the model's
# text, not with an error of ChatSpecSteer's.
UNSEEN_TOOL = (
    "an unseen tool (magic_function, get_weather with a required schema, unicode_customer):"
    " the demo pair names it or its arguments wrongly, e.g. {'value': 3} for {'input': 3}"
)
UNSEEN_SCHEMA = (
    "structured output with an unseen schema (Joke): the demo pair writes no valid arguments"
)
BEYOND_THE_DEMO_PAIR: dict[str, str] = {
    **dict.fromkeys(
        (
            "test_tool_calling",
            "test_tool_calling_async",
            "test_bind_runnables_as_tools",
            "test_tool_choice",
            "test_tool_calling_with_no_arguments",
            "test_agent_loop",
            "test_unicode_tool_call_integration",
        ),
        UNSEEN_TOOL,
    ),
    **dict.fromkeys(
        (
            "test_structured_output",
            "test_structured_output_async",
            "test_structured_output_pydantic_2_v1",
            "test_structured_output_optional_param",
        ),
        UNSEEN_SCHEMA,
    ),
}


def _expected_to_fail(test: str, reason: str):
    """langchain-tests' `test`, marked xfail(strict) for this class only."""
    base = getattr(ChatModelIntegrationTests, test)

    @functools.wraps(base)
    def run(self, *args, **kwargs):
        return base(self, *args, **kwargs)

    run.pytestmark = [
        *getattr(base, "pytestmark", []),
        pytest.mark.xfail(strict=True, reason=reason),
    ]
    return run


class TestChatSpecSteerIntegration(Declared, ChatModelIntegrationTests):
    @property
    def has_tool_calling(self) -> bool:
        return demo_tool_trained()

    @property
    def has_structured_output(self) -> bool:
        return demo_tool_trained()

    @property
    def chat_model_params(self) -> dict:
        specialist, generalist = demo_models()
        return {"specialist": specialist, "generalist": generalist}

    max_tokens = 24


for _test, _reason in BEYOND_THE_DEMO_PAIR.items():
    setattr(TestChatSpecSteerIntegration, _test, _expected_to_fail(_test, _reason))
