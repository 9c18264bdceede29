"""A converted model's graph as its flatbuffer says: ops in execution order, which of them compute
in float, signature names and a peak-memory estimate.

Read straight from the flatbuffer (ai_edge_litert's schema), so op names are the model's own,
never a delegate's.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_FLOAT_TYPES = {0, 1, 10, 18}  # float32, float16, float64, bfloat16
_DTYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8, 12: 8, 15: 4, 16: 2, 18: 2}


@cache
def _builtin_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {
        v: k
        for k, v in vars(schema.BuiltinOperator).items()
        if not k.startswith("_") and isinstance(v, int)
    }


@dataclass(frozen=True)
class ModelGraph:
    """What the flatbuffer says: ops in execution order (all subgraphs) and a peak-memory estimate."""

    ops: list[str]
    custom_ops: set[str]
    arena_estimate: int  # bytes of tensors alive at once in the main subgraph, at the peak
    subgraphs: int
    input_names: dict[int, str] = field(default_factory=dict)  # tensor index -> signature name
    output_names: dict[int, str] = field(default_factory=dict)
    float_ops: list[str] = field(default_factory=list)  # builtin ops that output float tensors

    @property
    def op_counts(self) -> Counter[str]:
        return Counter(self.ops)

    @property
    def float_layers(self) -> list[str]:
        """Ops that compute in float. DEQUANTIZE is not one: it only hands int8 values on to a
        float output (or to a float layer, which is counted itself)."""
        return [op for op in self.float_ops if op != "DEQUANTIZE"]


def read_graph(model_bytes: bytes) -> ModelGraph:
    """Parse a .tflite flatbuffer; raises ValueError when it is not one."""
    from ai_edge_litert import schema_py_generated as schema

    if len(model_bytes) < 8 or model_bytes[4:8] != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (no TFL3 identifier)")
    model = schema.Model.GetRootAs(model_bytes, 0)
    names = _builtin_names()
    codes: list[tuple[str, bool]] = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        if code == schema.BuiltinOperator.CUSTOM:
            codes.append(((oc.CustomCode() or b"?").decode(), True))
        else:
            codes.append((names.get(code, f"BUILTIN_{code}"), False))
    ops: list[str] = []
    custom: set[str] = set()
    float_ops: list[str] = []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for j in range(sg.OperatorsLength()):
            op = sg.Operators(j)
            name, is_custom = codes[op.OpcodeIndex()]
            ops.append(name)
            if is_custom:
                custom.add(name)
            elif op.OutputsLength() and any(
                o >= 0 and int(sg.Tensors(int(o)).Type()) in _FLOAT_TYPES
                for o in op.OutputsAsNumpy()
            ):
                float_ops.append(name)
    arena = _peak_live_bytes(model, model.Subgraphs(0)) if model.SubgraphsLength() else 0
    ins, outs = _signature_names(model)
    return ModelGraph(
        ops=ops,
        custom_ops=custom,
        arena_estimate=arena,
        subgraphs=model.SubgraphsLength(),
        input_names=ins,
        output_names=outs,
        float_ops=float_ops,
    )


def _signature_names(model: Any) -> tuple[dict[int, str], dict[int, str]]:
    """Signature names of the main subgraph's inputs and outputs, by tensor index."""
    ins: dict[int, str] = {}
    outs: dict[int, str] = {}
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        if int(sig.SubgraphIndex()) != 0:
            continue
        for j in range(sig.InputsLength()):
            t = sig.Inputs(j)
            ins[int(t.TensorIndex())] = (t.Name() or b"").decode()
        for j in range(sig.OutputsLength()):
            t = sig.Outputs(j)
            outs[int(t.TensorIndex())] = (t.Name() or b"").decode()
        break
    return ins, outs


def _peak_live_bytes(model: Any, sg: Any) -> int:
    """Largest sum of non-constant tensors alive at one op: a lower bound of a TFLM arena."""

    def nbytes(t: Any) -> int:
        shape = [max(int(d), 1) for d in t.ShapeAsNumpy()] if t.ShapeLength() else []
        return int(np.prod(shape, dtype=np.int64)) * _DTYPE_BYTES.get(int(t.Type()), 4)

    def constant(t: Any) -> bool:
        b = int(t.Buffer())
        if b <= 0 or b >= model.BuffersLength():
            return False
        buf = model.Buffers(b)
        return buf.DataLength() > 0 or int(buf.Size()) > 0

    n_ops = sg.OperatorsLength()
    born: dict[int, int] = {int(i): 0 for i in sg.InputsAsNumpy()} if sg.InputsLength() else {}
    last: dict[int, int] = {}
    for j in range(n_ops):
        op = sg.Operators(j)
        for i in op.InputsAsNumpy() if op.InputsLength() else []:
            if i >= 0:
                last[int(i)] = j
        for o in op.OutputsAsNumpy() if op.OutputsLength() else []:
            born.setdefault(int(o), j)
    for o in sg.OutputsAsNumpy() if sg.OutputsLength() else []:
        last[int(o)] = n_ops
    sizes = {}
    for idx in born:
        t = sg.Tensors(idx)
        if not constant(t):
            sizes[idx] = nbytes(t)
    peak = 0
    for step in range(max(n_ops, 1)):
        live = sum(sz for idx, sz in sizes.items() if born[idx] <= step <= last.get(idx, born[idx]))
        peak = max(peak, live)
    return peak


def _elements(t: Any) -> int:
    shape = [max(int(d), 1) for d in t.ShapeAsNumpy()] if t.ShapeLength() else []
    return int(np.prod(shape, dtype=np.int64))


def op_macs(model_bytes: bytes) -> dict[str, int]:
    """Output tensor name -> multiply-accumulates of the op that makes it (main subgraph).

    Convolutions count output elements x kernel taps (x input channels for CONV_2D), fully
    connected layers output elements x inputs; every other op one per output element.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_bytes, 0)
    names = _builtin_names()
    sg = model.Subgraphs(0)
    out: dict[str, int] = {}
    for j in range(sg.OperatorsLength()):
        op = sg.Operators(j)
        oc = model.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode())), "")
        if not op.OutputsLength() or op.OutputsAsNumpy()[0] < 0:
            continue
        result = sg.Tensors(int(op.OutputsAsNumpy()[0]))
        macs = _elements(result)
        ins = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
        if len(ins) >= 2 and ins[1] >= 0:
            w = [int(d) for d in sg.Tensors(ins[1]).ShapeAsNumpy()]
            if name == "CONV_2D" and len(w) == 4:
                macs *= w[1] * w[2] * w[3]
            elif name == "DEPTHWISE_CONV_2D" and len(w) == 4:
                macs *= w[1] * w[2]
            elif name == "FULLY_CONNECTED" and len(w) == 2:
                macs *= w[1]
        out[(result.Name() or b"").decode()] = macs
    return out
