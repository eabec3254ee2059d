"""VNN-LIB properties: parsing, the parsed model and counterexample witnesses (numpy only)."""

from .errors import SpecError, SpecParseError, SpecShapeError
from .model import Polytope, Spec, SpecCase
from .vnnlib import parse_vnnlib, parse_vnnlib_text
from .witness import format_witness, parse_witness

__all__ = [
    "Polytope",
    "Spec",
    "SpecCase",
    "SpecError",
    "SpecParseError",
    "SpecShapeError",
    "format_witness",
    "parse_vnnlib",
    "parse_vnnlib_text",
    "parse_witness",
]
