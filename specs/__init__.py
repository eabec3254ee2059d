"""VNN-LIB properties: parsing, the parsed model and counterexample witnesses (numpy only)."""

from .errors import SpecError, SpecParseError, SpecShapeError
from .model import Polytope, Spec, SpecCase
from .vnnlib import parse_vnnlib, parse_vnnlib_text
from .vnnlib2 import Query, TensorDecl, is_vnnlib2, parse_query, parse_query_text
from .witness import format_witness, parse_witness

__all__ = [
    "Polytope",
    "Query",
    "TensorDecl",
    "Spec",
    "SpecCase",
    "SpecError",
    "SpecParseError",
    "SpecShapeError",
    "format_witness",
    "is_vnnlib2",
    "parse_query",
    "parse_query_text",
    "parse_vnnlib",
    "parse_vnnlib_text",
    "parse_witness",
]
