"""BERT with its sequence head on the mean of the last hidden states (model.pooling=mean).

Sentence-embedding checkpoints such as all-MiniLM-L6-v2 were trained through mean pooling, not through
their [CLS] state and pooler (the shipped pooler's bias is all zeros), which the stock head reads. This
class keeps BERT's dropout and classifier and feeds them the mean over the real tokens instead. It imports
only torch and transformers: `save_pretrained` copies this file into the exported directory, which
`from_pretrained(..., trust_remote_code=True)` then loads without tunelab.
"""

from __future__ import annotations

import torch
from transformers import BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

POOLING = "mean"  # the config.json field `pooling` that marks such a model


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the positions the attention mask keeps (padding left out)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


class BertMeanPoolingForSequenceClassification(BertForSequenceClassification):
    # the checkpoint's pooler weights are not used (without them DDP would find parameters with no gradient)
    _keys_to_ignore_on_load_unexpected = [r"pooler\."]

    def __init__(self, config) -> None:
        super().__init__(config)
        self.config.pooling = POOLING
        self.bert.pooler = None

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, **kwargs) -> SequenceClassifierOutput:
        kwargs.pop("return_dict", None)
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds, return_dict=True, **kwargs)
        pooled = masked_mean(outputs.last_hidden_state, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else self.loss_function(labels, logits, self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)


# save_pretrained writes this file beside the weights and names it in config.json's auto_map
BertMeanPoolingForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
