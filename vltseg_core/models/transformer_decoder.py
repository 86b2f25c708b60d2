"""Mask2Former's masked-attention transformer decoder: learnable queries attend to one pyramid level per layer
(round-robin, coarse to fine), restricted to the foreground of the previous layer's mask prediction."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vltseg_core.models.position_encoding import PositionEmbeddingSine


class AttentionLayer(nn.Module):
    """Post-norm (self- or cross-) attention block with positional embeddings added to queries and keys."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.attn(tgt + query_pos, memory + pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        return self.norm(tgt + self.dropout(out))


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        return self.norm(tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MaskedTransformerDecoder(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, hidden_dim: int = 256, num_queries: int = 100,
                 nheads: int = 8, dim_feedforward: int = 2048, dec_layers: int = 9, mask_dim: int = 256,
                 num_levels: int = 3):
        super().__init__()
        self.num_heads, self.num_layers, self.num_levels = nheads, dec_layers, num_levels
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        self.cross_attention_layers = nn.ModuleList(AttentionLayer(hidden_dim, nheads) for _ in range(dec_layers))
        self.self_attention_layers = nn.ModuleList(AttentionLayer(hidden_dim, nheads) for _ in range(dec_layers))
        self.ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_levels, hidden_dim)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, 1) if in_channels != hidden_dim else nn.Identity() for _ in range(num_levels))
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def _predict(self, output: torch.Tensor, mask_features: torch.Tensor, target_size: tuple[int, int]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class logits, mask logits and the boolean attention mask (True = blocked) for the next level."""
        decoded = self.decoder_norm(output)
        logits = self.class_embed(decoded)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)
        attn = F.interpolate(masks, size=target_size, mode="bilinear", align_corners=False)
        attn = attn.sigmoid().flatten(2).unsqueeze(1).expand(-1, self.num_heads, -1, -1).flatten(0, 1) < 0.5
        return logits, masks, attn.detach()

    def forward(self, multi_scale: list[torch.Tensor], mask_features: torch.Tensor) -> dict:
        srcs, poss, sizes = [], [], []
        for i, x in enumerate(multi_scale):
            sizes.append((x.shape[-2], x.shape[-1]))
            poss.append(self.pe_layer(x).flatten(2).transpose(1, 2))
            srcs.append(self.input_proj[i](x).flatten(2).transpose(1, 2) + self.level_embed.weight[i])
        n = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(n, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(n, -1, -1)
        logits, masks, attn = self._predict(output, mask_features, sizes[0])
        predictions = [(logits, masks)]
        for i in range(self.num_layers):
            lvl = i % self.num_levels
            attn = attn & ~attn.all(-1, keepdim=True)  # a query whose mask is empty attends everywhere
            output = self.cross_attention_layers[i](output, query_pos, srcs[lvl], poss[lvl], attn_mask=attn)
            output = self.self_attention_layers[i](output, query_pos, output, query_pos)
            output = self.ffn_layers[i](output)
            logits, masks, attn = self._predict(output, mask_features, sizes[(i + 1) % self.num_levels])
            predictions.append((logits, masks))
        return {"pred_logits": predictions[-1][0], "pred_masks": predictions[-1][1],
                "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in predictions[:-1]]}
