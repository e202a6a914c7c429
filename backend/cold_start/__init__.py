"""The cold start: suggestions before the first label, from embedding similarity to the schema's definitions and cues.

embedder.py     SentenceEmbedder: mean-pooled, L2-normalised sentence embeddings (torch or ONNX Runtime), cached
onnx_export.py  the encoder exported to ONNX (fp32 or int8), verified against torch and cached on disk
predictor.py    ColdStartPredictor: choices by similarity to label prototypes, spans from cue matches
"""
