"""SpecSteer for LangChain: a private on-device specialist and a remote generalist, one text."""

from langchain_specsteer.chat_models import ChatSpecSteer
from langchain_specsteer.demo import demo_pair
from langchain_specsteer.engine import SpecSteerEngine
from langchain_specsteer.llms import SpecSteerLLM
from langchain_specsteer.models import LocalGeneralist, LocalSpecialist
from langchain_specsteer.params import METHODS, DecodingParams

__all__ = [
    "METHODS",
    "ChatSpecSteer",
    "DecodingParams",
    "LocalGeneralist",
    "LocalSpecialist",
    "SpecSteerEngine",
    "SpecSteerLLM",
    "demo_pair",
]
__version__ = "0.1.0"
