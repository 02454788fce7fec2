"""The float graph rewrites around ONNX Runtime's ``quantize_static`` (runtime/quantize_int8.py),
all exact in float, all in place on an ``onnx.ModelProto``: :func:`prepare_for_int8` before,
:func:`route_float_consumers` after; :func:`network_nodes` names the layers to quantize.

Why the graph is prepared before and fixed up after ``quantize_static`` (measured on the R-50
export, 800x1333, 2 threads, AVX-512 VNNI CPU, ONNX Runtime 1.32):

* **Untie shared initializers** (:func:`untie_initializers`). The exporter stores identical
  tensors once and feeds the other users through ``Identity`` nodes (66 of 86 conv biases of a
  random checkpoint are such copies), and the RPN head applies one set of weights to five FPN
  levels. ``quantize_static`` quantizes a bias initializer once, with the input and weight scales
  of its first user, and every other user reads that int32 bias. Numerically that is still right
  in QDQ form (the bias DQ carries its own scale), but ONNX Runtime's Conv selector only fuses
  DQ->Conv->Q into QLinearConv when the bias scale is input_scale x weight_scale (onnxruntime PR
  #28229, "validate bias scale in QDQ Conv -> QLinearConv fusion"), otherwise the Conv runs in
  float between a DequantizeLinear and a QuantizeLinear. That is why only 24 of 89 convolutions
  were fused and the int8 model (3.4 s) was no faster than fp32 (3.2 s); requantizing just those
  65 biases made them fuse. One copy per user gives each bias its own scale: 84 fused. The
  same ``Identity`` biases are what crashed the QOperator format (the quantizer looks the bias up
  as an initializer, gets None, then ``None.data_type``).
* **Every consumer of a quantized tensor reads it quantized** (:func:`route_float_consumers`).
  ONNX Runtime fuses a Conv only when *all* its output edges go to QuantizeLinear; the five FPN
  convs whose outputs also fed RoIAlign or ``Shape`` (P2-P5 outputs, lateral 3) stayed float. ``Shape`` now reads the
  uint8 tensor (same shape, nothing to compute) and RoIAlign reads a DequantizeLinear: 89 of 89
  convolutions fused, and no full-size DequantizeLinear is run just to take a shape.
* **Mask head upsampling as 1x1 convolutions** (:func:`conv_transpose_to_conv`). ONNX Runtime has
  no int8 ConvTranspose on the CPU (5 GMAC in float for 100 RoIs). ConvTranspose(k=2, s=2) is a 1x1
  conv to 4x the channels followed by DepthToSpace; the following ReLU is pointwise and the
  1x1 ``conv_logits`` is applied per 2x2 block position (a grouped 1x1 conv), so DepthToSpace
  moves to the end, on the small float logits. Exact in float.
* **Semantic head level sum as Adds** (:func:`reduce_sum_to_adds`): Unsqueeze+Concat+ReduceSum
  over the four levels is three Adds (QLinearAdd) instead of float Concat/ReduceSum on 4x the
  data.
* **U8S8** (uint8 activations, int8 weights): what VNNI's vpdpbusd multiplies natively. With int8
  activations (S8S8) ONNX Runtime on x86 fused only 40 of 90 convolutions (2.9 s). No
  reduce_range (only the non-VNNI AVX2 path needs 7-bit weights against saturation).
  Per-channel symmetric weights: same speed as per-tensor (1.07 vs 1.07 s), better accuracy.
* **QDQ format, not QOperator**: with the graph prepared as above QOperator also runs (90
  QLinearConv) but is slower (1.38 vs 1.20 s: more tensors dequantized for float consumers).
* Only the network's layers are quantized (node names carry the module path of the exporter);
  quantizing the Adds, ReLUs, pools and resizes between convolutions keeps the chains int8.
  Bilinear Resize (semantic head) stays DQ -> float Resize -> Q: ONNX Runtime only drops the Q/DQ
  around nearest-neighbour Resize.
"""
from __future__ import annotations

import collections
from typing import Any, Sequence

import numpy as np

DEFAULT_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Relu", "MaxPool", "Resize")
QUANTIZED_MODULES = ("backbone", "neck", "rpn_head", "bbox_head", "mask_head", "semantic_head")
# ops whose weights / biases are quantized per user (see untie_initializers)
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def network_nodes(model, op_types: Sequence[str]) -> list[str]:
    """Names of the nodes to quantize: ``op_types`` inside the network's modules."""
    names = []
    for node in model.graph.node:
        parts = node.name.split("/")
        if node.op_type in op_types and len(parts) > 2 and parts[1] in QUANTIZED_MODULES:
            names.append(node.name)
    return names


# ----------------------------------------------------------------------------------------------
# graph preparation (float, exact)

def _consumers(graph) -> dict[str, list[tuple[Any, int]]]:
    users: dict[str, list[tuple[Any, int]]] = collections.defaultdict(list)
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name:
                users[name].append((node, k))
    return users


def _replace_nodes(graph, nodes: list) -> None:
    del graph.node[:]
    graph.node.extend(nodes)


def _drop_unused_initializers(graph) -> None:
    """Remove initializers and Constant nodes nothing reads."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept_nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] not in used)]
    if len(kept_nodes) != len(graph.node):
        _replace_nodes(graph, kept_nodes)
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def untie_initializers(model) -> int:
    """Give every Conv / Gemm / MatMul its own weight and bias initializers, in place.

    ``Identity(initializer)`` nodes become initializer copies, and an initializer used by several
    weighted nodes is copied for each of them, so that the quantizer quantizes each bias with its
    own node's input scale (what ONNX Runtime needs to fuse QLinearConv). Returns the number of
    copies made.
    """
    import onnx

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    copies = 0
    kept = []
    for node in graph.node:
        if (node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in graph_outputs
                and node.output[0] not in inits):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(inits[node.input[0]])
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            inits[tensor.name] = tensor
            copies += 1
        else:
            kept.append(node)
    _replace_nodes(graph, kept)
    for name, users in _consumers(graph).items():
        if name not in inits or len(users) < 2:
            continue
        weighted = [(node, k) for node, k in users if node.op_type in WEIGHTED_OPS]
        # the first user keeps the original unless every user is a weighted node
        start = 1 if len(weighted) == len(users) else 0
        for j, (node, k) in enumerate(weighted[start:], 1):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(inits[name])
            tensor.name = f"{name}__untied{j}"
            graph.initializer.append(tensor)
            node.input[k] = tensor.name
            copies += 1
    _drop_unused_initializers(graph)
    return copies


def _attr(node, name, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def conv_transpose_to_conv(model) -> int:
    """ConvTranspose with kernel == stride (no padding, group 1) -> 1x1 Conv + DepthToSpace, in place.

    ``y[co, s*h+a, s*w+b] = sum_ci x[ci, h, w] W[ci, co, a, b] + bias[co]`` is a 1x1 conv to s*s*Cout
    channels ordered (a, b, co) followed by DepthToSpace(s, "DCR"). When the ConvTranspose is
    followed by Relu and a 1x1 Conv (the mask head's conv_logits), both are applied before the
    DepthToSpace (Relu is pointwise; the 1x1 conv becomes a grouped conv, one group per block
    position), so DepthToSpace works on the small float logits and all convolutions are int8.
    Returns the number of ConvTransposes replaced.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    replaced: dict[str, list] = {}  # node name -> replacement nodes (None: drop)
    count = 0
    for node in graph.node:
        if node.op_type != "ConvTranspose" or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if w.ndim != 4:
            continue
        cin, cout, kh, kw = w.shape
        if not (kh == kw and list(_attr(node, "strides", [1, 1])) == [kh, kw]
                and not any(_attr(node, "pads", [0, 0, 0, 0])) and list(_attr(node, "dilations", [1, 1])) == [1, 1]
                and _attr(node, "group", 1) == 1 and not any(_attr(node, "output_padding", [0, 0]))
                and _attr(node, "output_shape") is None
                and _attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")):
            continue
        s = kh
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in inits:
                continue
            bias = numpy_helper.to_array(inits[node.input[2]])
        else:
            bias = np.zeros(cout, np.float32)
        wa = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(s * s * cout, cin, 1, 1))
        ba = np.tile(bias, s * s)
        base = node.name
        wa_name, ba_name = f"{base}_as_conv.weight", f"{base}_as_conv.bias"
        graph.initializer.extend([numpy_helper.from_array(wa.astype(w.dtype), wa_name),
                                  numpy_helper.from_array(ba.astype(w.dtype), ba_name)])
        blocks = f"{node.output[0]}_blocks"
        conv_a = helper.make_node("Conv", [node.input[0], wa_name, ba_name], [blocks], name=f"{base}_as_conv",
                                  kernel_shape=[1, 1])

        # optional Relu -> 1x1 Conv tail applied before DepthToSpace
        tail = None
        out_users = users.get(node.output[0], [])
        if len(out_users) == 1 and out_users[0][0].op_type == "Relu" and node.output[0] not in graph_outputs:
            relu = out_users[0][0]
            relu_users = users.get(relu.output[0], [])
            if len(relu_users) == 1 and relu.output[0] not in graph_outputs:
                conv, k = relu_users[0]
                if (conv.op_type == "Conv" and k == 0 and conv.input[1] in inits
                        and (len(conv.input) < 3 or not conv.input[2] or conv.input[2] in inits)
                        and _attr(conv, "group", 1) == 1 and not any(_attr(conv, "pads", [0, 0, 0, 0]))
                        and list(_attr(conv, "strides", [1, 1])) == [1, 1]):
                    wl = numpy_helper.to_array(inits[conv.input[1]])
                    if wl.shape[2:] == (1, 1) and wl.shape[1] == cout:
                        tail = (relu, conv, wl)
        if tail is None:
            d2s = helper.make_node("DepthToSpace", [blocks], [node.output[0]], name=f"{base}_depth_to_space",
                                   blocksize=s, mode="DCR")
            replaced[node.name] = [conv_a, d2s]
        else:
            relu, conv, wl = tail
            k_out = wl.shape[0]
            bl = (numpy_helper.to_array(inits[conv.input[2]]) if len(conv.input) > 2 and conv.input[2]
                  else np.zeros(k_out, wl.dtype))
            wb_name, bb_name = f"{conv.name}_blocks.weight", f"{conv.name}_blocks.bias"
            graph.initializer.extend([numpy_helper.from_array(np.tile(wl, (s * s, 1, 1, 1)), wb_name),
                                      numpy_helper.from_array(np.tile(bl, s * s).astype(wl.dtype), bb_name)])
            relu_out = f"{relu.output[0]}_blocks"
            logits_blocks = f"{conv.output[0]}_blocks"
            new_relu = helper.make_node("Relu", [blocks], [relu_out], name=relu.name)
            conv_b = helper.make_node("Conv", [relu_out, wb_name, bb_name], [logits_blocks], name=f"{conv.name}_blocks",
                                      kernel_shape=[1, 1], group=s * s)
            d2s = helper.make_node("DepthToSpace", [logits_blocks], [conv.output[0]],
                                   name=f"{conv.name}_depth_to_space", blocksize=s, mode="DCR")
            replaced[node.name] = [conv_a]
            replaced[relu.name] = [new_relu]
            replaced[conv.name] = [conv_b, d2s]
        count += 1
    if count:
        nodes = []
        for node in graph.node:
            nodes.extend(replaced.get(node.name, [node]))
        _replace_nodes(graph, nodes)
        _drop_unused_initializers(graph)
        del graph.value_info[:]  # stale shapes of the replaced tensors
    return count


def reduce_sum_to_adds(model) -> int:
    """``ReduceSum(Concat(Unsqueeze(x_i, 0)...), axes=[0], keepdims=0)`` -> ``x_0 + x_1 + ...``, in place.

    The semantic head sums its four upsampled levels this way; as Adds they run as QLinearAdd.
    Returns the number of sums replaced.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    users = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}

    def const_ints(name):
        if name in inits:
            return [int(v) for v in numpy_helper.to_array(inits[name]).ravel()]
        node = producers.get(name)
        if node is not None and node.op_type == "Constant":
            return [int(v) for v in numpy_helper.to_array(_attr(node, "value")).ravel()]
        return None

    drop: set[str] = set()
    insert: dict[str, list] = {}
    count = 0
    for node in graph.node:
        if node.op_type != "ReduceSum" or _attr(node, "keepdims", 1) != 0 or len(node.input) < 2:
            continue
        if const_ints(node.input[1]) != [0]:
            continue
        concat = producers.get(node.input[0])
        if (concat is None or concat.op_type != "Concat" or _attr(concat, "axis") != 0
                or len(users[concat.output[0]]) != 1 or concat.output[0] in graph_outputs or len(concat.input) < 2):
            continue
        sources: list[Any] = [producers.get(name) for name in concat.input]
        if not all(u is not None and u.op_type == "Unsqueeze" and len(users[u.output[0]]) == 1
                   and u.output[0] not in graph_outputs and len(u.input) > 1 and const_ints(u.input[1]) == [0]
                   for u in sources):
            continue
        # module prefix of the ReduceSum ("/semantic_head/ReduceSum" -> "/semantic_head/")
        prefix = node.name.rsplit("/", 1)[0] + "/"
        adds = []
        acc = sources[0].input[0]
        for i, unsq in enumerate(sources[1:], 1):
            out = node.output[0] if i == len(sources) - 1 else f"{prefix}level_sum_{i}"
            adds.append(helper.make_node("Add", [acc, unsq.input[0]], [out], name=f"{prefix}level_sum_{i}"))
            acc = out
        drop.update(n.name for n in sources)
        drop.add(concat.name)
        insert[node.name] = adds
        count += 1
    if count:
        nodes = []
        for node in graph.node:
            if node.name in drop:
                continue
            nodes.extend(insert.get(node.name, [node]))
        _replace_nodes(graph, nodes)
        _drop_unused_initializers(graph)
    return count


def prepare_for_int8(model) -> dict[str, int]:
    """All float graph rewrites above, in place; returns what each changed."""
    return {"untied": untie_initializers(model), "conv_transpose": conv_transpose_to_conv(model),
            "level_sums": reduce_sum_to_adds(model)}


# ----------------------------------------------------------------------------------------------
# after quantize_static

def route_float_consumers(model) -> int:
    """Make every consumer of a quantized tensor read the quantized tensor, in place.

    ONNX Runtime fuses DQ->Conv->Q only when all of the Conv's output edges go to QuantizeLinear.
    For a tensor ``x`` that feeds a QuantizeLinear and also float nodes: ``Shape`` nodes read the
    quantized tensor (same shape) and the others read one DequantizeLinear of it. ``Shape`` nodes
    reading a DequantizeLinear output read its quantized input instead. Returns the number of
    inputs rerouted.
    """
    from onnx import helper

    graph = model.graph
    users = _consumers(graph)
    producers = {o: n for n in graph.node for o in n.output}
    after: dict[str, list] = collections.defaultdict(list)  # Q node name -> DQ nodes to insert after it
    rerouted = 0
    for name, uses in list(users.items()):
        quantizers = [n for n, k in uses if n.op_type == "QuantizeLinear" and k == 0]
        others = [(n, k) for n, k in uses if n.op_type != "QuantizeLinear"]
        if not quantizers or not others or name not in producers:
            continue
        q = quantizers[0]
        dq_out = None
        for node, k in others:
            if node.op_type == "Shape":
                node.input[k] = q.output[0]
            else:
                if dq_out is None:
                    dq_out = f"{name}_float"
                    after[q.name].append(helper.make_node(
                        "DequantizeLinear", [q.output[0], *q.input[1:3]], [dq_out], name=f"{name}_DequantizeLinear_float"))
                node.input[k] = dq_out
            rerouted += 1
    for node in graph.node:
        if node.op_type == "Shape":
            src = producers.get(node.input[0])
            if src is not None and src.op_type == "DequantizeLinear":
                node.input[0] = src.input[0]
                rerouted += 1
    if after:
        nodes = []
        for node in graph.node:
            nodes.append(node)
            nodes.extend(after.get(node.name, []))
        _replace_nodes(graph, nodes)
    # DequantizeLinear nodes left without consumers (their only user was a Shape)
    users = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    kept = [n for n in graph.node if not (n.op_type == "DequantizeLinear" and n.output[0] not in users
                                          and n.output[0] not in graph_outputs)]
    _replace_nodes(graph, kept)
    _drop_unused_initializers(graph)
    return rerouted
