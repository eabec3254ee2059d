"""The operator registry: ONNX op type -> stateless rule. One explicit literal, on purpose."""
from __future__ import annotations

from bounds.ops import conv, linear, relu, s_shaped, shape
from bounds.ops.base import OpRule

RULES: dict[str, OpRule] = {
    # affine
    "Gemm": linear.Gemm(),
    "MatMul": linear.MatMul(),
    "Add": linear.Add(),
    "Sub": linear.Sub(),
    "Neg": linear.Neg(),
    "Mul": linear.Mul(),
    "Div": linear.Div(),
    "BatchNormalization": linear.BatchNormalization(),
    "ReduceSum": linear.ReduceSum(),
    "ReduceMean": linear.ReduceMean(),
    "Conv": conv.Conv(),
    "Pad": conv.Pad(),
    "AveragePool": conv.AveragePool(),
    "GlobalAveragePool": conv.GlobalAveragePool(),
    # shape plumbing
    "Reshape": shape.Reshape(),
    "Flatten": shape.Flatten(),
    "Transpose": shape.Transpose(),
    "Squeeze": shape.Squeeze(),
    "Unsqueeze": shape.Unsqueeze(),
    "Concat": shape.Concat(),
    "Split": shape.Split(),
    "Slice": shape.Slice(),
    "Gather": shape.Gather(),
    "Identity": shape.Identity(),
    "Dropout": shape.Identity(),
    "Expand": shape.Expand(),
    "Where": shape.Where(),
    "Cast": shape.Cast(),
    # constant producers (folded on import)
    "Shape": shape.Shape(),
    "ConstantOfShape": shape.ConstantOfShape(),
    "Range": shape.Range(),
    "Equal": shape.Equal(),
    # activations
    "Relu": relu.Relu(),
    "LeakyRelu": relu.LeakyRelu(),
    "Sigmoid": s_shaped.Sigmoid(),
    "Tanh": s_shaped.Tanh(),
    # pooling (IBP only for now)
    "MaxPool": conv.MaxPool(),
    "GlobalMaxPool": conv.GlobalMaxPool(),
}

__all__ = ["RULES", "OpRule"]
