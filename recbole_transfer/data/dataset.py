"""Dataset classes the stock RecBole ones lack.

``TextSequentialDataset``: a SequentialDataset whose items carry PLM vectors of their text, read from the
``<D>.text`` side file and encoded (and cached) by ``recbole_transfer.data.text``.
"""
import os

import torch
from recbole.data.dataset import SequentialDataset

from recbole_transfer.data import text


class TextSequentialDataset(SequentialDataset):
    """``self.plm_embedding``: float tensor [item_num, plm_size] aligned with ``field2id_token[item_id]``
    (row 0, the padding item, is all zeros)."""

    def __init__(self, config):
        super().__init__(config)
        self.item_texts = self._load_item_texts()
        self.plm_embedding = self.encode_item_texts()
        self.plm_size = self.plm_embedding.shape[1]

    def _load_data(self, token, dataset_path):
        super()._load_data(token, dataset_path)
        # tokens before filtering: a text row for one of these is known even if filtering later drops the item
        self._raw_item_tokens = set(self.inter_feat[self.iid_field].tolist())

    def _text_path(self):
        return os.path.join(self.dataset_path, f"{self.dataset_name}.{self.config['text_side_file']}")

    def _load_item_texts(self):
        path = self._text_path()
        return text.align_item_text(
            text.read_item_text(path),
            list(self.field2id_token[self.iid_field]),
            known_tokens=self._raw_item_tokens,
            source=os.path.basename(path),
        )

    def encode_item_texts(self, word_drop_ratio=0.0, seed=None):
        """PLM matrix of the item texts (cached on disk); ``word_drop_ratio`` > 0 gives the augmented variant."""
        config = self.config
        return text.item_text_matrix(
            self.dataset_name,
            self.item_texts,
            plm_name=config["plm_name"],
            pooling=config["plm_pooling"],
            max_length=config["plm_max_length"],
            cache_dir=config["text_cache_dir"],
            device=config["device"] if config["plm_device"] is None else config["plm_device"],
            word_drop_ratio=word_drop_ratio,
            seed=config["seed"] if seed is None else seed,
            logger=self.logger,
            show_progress=config["show_progress"],
        ).to(torch.float32)
