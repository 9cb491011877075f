"""The transformer layer stack of a Hugging Face model, and each parameter's depth in it (freeze_layers,
freeze_embeddings, layer_decay, compile_scope=layers)."""

from __future__ import annotations

from torch import nn

from tunelab.errors import ConfigError


def transformer_layers(model: nn.Module, option: str = "model.freeze_layers") -> nn.ModuleList:
    """The stack of transformer blocks (BERT's encoder.layer, GPT-2's h, ...): the longest ModuleList.
    `option` names the setting that needs them, for the error when there is none or there are two (an
    encoder-decoder's: T5's longest list is a block's sub-layers, BART's the encoder alone)."""
    if getattr(model.config, "is_encoder_decoder", False):
        raise ConfigError(f"{option} needs one stack of transformer layers; {model.config.model_type} is an "
                          "encoder-decoder with two: leave it unset for this model.")
    layers = max((m for m in model.base_model.modules() if isinstance(m, nn.ModuleList)), key=len, default=None)
    if not layers:
        raise ConfigError(f"{option} needs a model with a stack of transformer layers: leave it unset for this model.")
    return layers


def layer_depth(model: nn.Module, option: str) -> tuple[dict[nn.Parameter, int], int]:
    """Each parameter's depth, and the top one: 0 for the embeddings (what comes before the transformer layers, and
    the backbone's embedding tables registered after them: DeBERTa's relative positions), i + 1 for layer i, the top
    (len(layers) + 1) for what comes after (final norm, pooler, head). An output layer tied to the input embeddings
    is the embedding parameter."""
    layers = transformer_layers(model, option)
    in_layer = {p: i + 1 for i, layer in enumerate(layers) for p in layer.parameters()}
    tables = {p for name, m in model.base_model.named_modules() if "embed" in name.rsplit(".", 1)[-1].lower()
              for p in m.parameters()}  # not GPT-NeoX's embed_out: an output layer outside the backbone
    top, past_layers, depths = len(layers) + 1, False, {}
    for p in model.parameters():  # registration order: embeddings, the layers, then the head
        depth = in_layer.get(p)
        past_layers = past_layers or depth is not None
        depths[p] = depth if depth is not None else top if past_layers and p not in tables else 0
    return depths, top
