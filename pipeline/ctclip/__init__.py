"""CT-CLIP (v2), re-implemented to load the official ``CT-CLIP_v2.pt`` strictly.

``model.CTCLIP`` (encode_ct / encode_text), ``checkpoint.load_ctclip``,
``preprocess.preprocess_ct``, ``text.load_tokenizer`` / ``tokenize`` /
``report_text``; sizes in ``config.get_config`` ('official', 'tiny').
Heavy imports (torch, transformers) happen in the submodules.
"""
