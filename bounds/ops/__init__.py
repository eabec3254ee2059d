"""The operator registry: ONNX op type -> stateless rule. One explicit literal, on purpose."""
from __future__ import annotations

from bounds.ops import (bilinear, conv, convex, elu, gelu, inverse_s, linear, minmax, norm, periodic, piecewise,
                       relu, s_shaped, shape, silu, softmax)
from bounds.ops.base import OpRule

RULES: dict[str, OpRule] = {
    # affine
    "Gemm": linear.Gemm(),
    "MatMul": bilinear.MatMul(),  # h2a: linear.MatMul with a constant operand, McCormick otherwise
    "Add": linear.Add(),
    "Sub": linear.Sub(),
    "Neg": linear.Neg(),
    "Mul": bilinear.Mul(),  # h2a: linear.Mul with a constant operand, McCormick otherwise
    "Div": bilinear.Div(),  # h2a: linear.Div with a constant operand, McCormick otherwise
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
    # normalisation over a group of values (h2a: bounds/ops/softmax.py)
    "Softmax": softmax.Softmax(),
    # activations
    "Relu": relu.Relu(),
    "LeakyRelu": relu.LeakyRelu(),
    "Sigmoid": s_shaped.Sigmoid(),
    "Tanh": s_shaped.Tanh(),
    # unary nonlinearities (h1: convex.py, periodic.py, s_shaped.py; bounds.ops.curves relaxes them)
    "Erf": s_shaped.Erf(),
    "Atan": s_shaped.Atan(),
    "Softsign": s_shaped.Softsign(),
    "Asinh": s_shaped.Asinh(),
    "Sinh": inverse_s.Sinh(),
    "Tan": inverse_s.Tan(),
    "Asin": inverse_s.Asin(),
    "Acos": inverse_s.Acos(),
    "Atanh": inverse_s.Atanh(),
    "Acosh": convex.Acosh(),
    "Cosh": convex.Cosh(),
    "Exp": convex.Exp(),
    "Log": convex.Log(),
    "Sqrt": convex.Sqrt(),
    "Reciprocal": convex.Reciprocal(),
    "Abs": convex.Abs(),
    "Pow": convex.Pow(),  # IBP only; canonicalisation turns constant scalar exponents into:
    convex.POW: convex.UnaryPow(),
    "Sin": periodic.Sin(),
    "Cos": periodic.Cos(),
    "Gelu": gelu.Gelu(),
    silu.SILU: silu.Silu(),
    "Softplus": silu.Softplus(),
    "Mish": silu.Mish(),
    # exponential linear units (h4: bounds/ops/elu.py)
    "Elu": elu.Elu(),
    "Selu": elu.Selu(),
    "Celu": elu.Celu(),
    "Clip": piecewise.ClipInputs(),  # IBP only; canonicalisation turns constant limits into:
    piecewise.CLIP: piecewise.Clip(),
    "HardSigmoid": piecewise.HardSigmoid(),
    "HardSwish": piecewise.HardSwish(),
    "Sign": piecewise.Sign(),
    "ThresholdedRelu": piecewise.ThresholdedRelu(),
    # piecewise-linear selections (h2b: bounds/ops/minmax.py)
    "Max": minmax.Max(),
    "Min": minmax.Min(),
    "ReduceMax": minmax.ReduceMax(),
    "ReduceMin": minmax.ReduceMin(),
    "MaxPool": minmax.MaxPool(),
    "GlobalMaxPool": minmax.GlobalMaxPool(),
    "TopK": minmax.TopK(),
    "nnverify.GroupSort": minmax.GroupSort(),
    "nnverify.MaxMin": minmax.MaxMin(),
    "nnverify.PairDiff": minmax.PairDiff(),
    # normalisation (h2b: bounds/ops/norm.py)
    "LayerNormalization": norm.LayerNormalization(),
    # linear plumbing (h2b: conv.py, shape.py)
    "ConvTranspose": conv.ConvTranspose(),
    "Resize": shape.Resize(),
    "Upsample": shape.Upsample(),
}

__all__ = ["RULES", "OpRule"]
