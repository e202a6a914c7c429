"""The cold start's encoder: the sentence embeddings its rules (training/cold_start.py) read in the backend.

embedder.py     SentenceEmbedder: mean-pooled, L2-normalised sentence embeddings (torch or ONNX Runtime), cached;
                served_embedder builds it from the backend's settings
onnx_export.py  the encoder exported to ONNX (fp32 or int8), verified against torch and cached on disk

The rules themselves (ColdStartPredictor: cue evidence, target mentions, label definitions) live in
training/cold_start.py, because a trained model reads the cold start's answers as features too
(training/prior.py).
"""
