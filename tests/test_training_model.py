"""The multi-head model (views, masked losses, save/load), span tags, calibration and the evaluation metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_reliability_support import torch_threads_restored  # noqa: F401 (a fixture)
from training.calibration import (
    confidence_and_correct,
    expected_calibration_error,
    fit_temperature,
    nll,
    sigmoid,
    softmax,
)
from training.evaluation import evaluate_outputs, span_metrics
from training.modeling import IGNORE, MultiHeadModel, encode_views, pad_views
from training.predict import decode_spans
from training.trainer import Collator, featurize, load_tokenizer, token_tags

TEXTS = [
    {"text": "Moscow calls the invasion warnings propaganda.", "title": "A"},
    {"text": "NATO says the troops at the border are a real danger to Ukraine.", "title": "B"},
]


@pytest.fixture(scope="module")
def model(schema):
    torch.manual_seed(0)
    built = MultiHeadModel.from_encoder(schema, max_seq_length=48)
    return built.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


def test_one_pass_per_view_and_a_head_per_dimension(model, tokenizer, schema):
    views = [v.id for v in model.config.views]
    assert views == ["text|russia_china", "text|us_policy", "text|nato_enlargement", "text"]
    batch = pad_views(encode_views(tokenizer, model.config, TEXTS))
    with torch.inference_mode():
        logits = model(
            views={k: {n: t for n, t in v.items() if n != "offset_mapping"} for k, v in batch.items()}
        ).logits
    for dim in schema.dimensions:
        width = len(dim.labels)
        shape = logits[dim.name].shape
        assert shape[0] == 2 and (shape[-2:] == (width, 3) if dim.kind == "spans" else shape == (2, width))


def test_pair_input_keeps_offsets_of_the_text_only(model, tokenizer):
    (item,) = encode_views(tokenizer, model.config, TEXTS[:1])
    pair = item["text|us_policy"]
    text = TEXTS[0]["text"]
    words = [text[s:e] for s, e in pair["offset_mapping"] if s >= 0]
    assert words[0] == "Moscow" and "US" not in words  # target tokens carry no text offsets
    assert len(pair["input_ids"]) > len(item["text"]["input_ids"])  # the target is in the input


def test_save_and_load_round_trip_gives_identical_outputs(model, tokenizer, tmp_path):
    batch = pad_views(encode_views(tokenizer, model.config, TEXTS))
    views = {k: {n: t for n, t in v.items() if n != "offset_mapping"} for k, v in batch.items()}
    model.save_pretrained(tmp_path)
    loaded = MultiHeadModel.from_pretrained(tmp_path).eval()
    assert loaded.config.dimensions == model.config.dimensions
    assert loaded.config.encoder_name == model.config.encoder_name
    with torch.inference_mode():
        before, after = model(views=views).logits, loaded(views=views).logits
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_missing_labels_are_masked_not_negatives(model, tokenizer):
    rows = [
        {**TEXTS[0], "threat_characterization": "manufactured", "frames": ["Political"]},
        {**TEXTS[1], "threat_characterization": None, "frames": None},  # unlabeled: must not count
    ]
    items = featurize(rows, model.config, tokenizer)
    assert items[1]["labels"]["threat_characterization"] == IGNORE
    assert items[1]["labels"]["frames"] == [-1.0] * 14
    assert all(t == [IGNORE] * 3 for t in items[1]["labels"]["evidence"])
    collate = Collator(model.config)
    with torch.inference_mode():
        both = model(**collate(items)).loss
        alone = model(**collate(items[:1])).loss
    assert torch.isfinite(both)
    assert both.item() == pytest.approx(alone.item(), abs=1e-4)


def test_training_skips_views_without_labels(model, tokenizer):
    rows = [{**TEXTS[0], "threat_characterization": "genuine"}, {**TEXTS[1], "threat_characterization": "contested"}]
    batch = Collator(model.config)(featurize(rows, model.config, tokenizer))
    model.train()
    try:
        out = model(**batch)
        out.loss.backward()
    finally:
        model.eval()
        model.zero_grad()
    assert torch.isfinite(out.loss)
    assert "stance_us_policy" not in out.logits  # the target passes never ran
    assert out.logits["threat_characterization"].abs().sum() > 0


def test_span_tags_from_character_offsets():
    offsets = [(-1, -1), (0, 6), (7, 12), (13, 16), (16, 20), (-1, -1)]  # [CLS] Moscow calls hyp ##e. [SEP]
    spans = [{"start": 0, "end": 6, "label": "actor"}, {"start": 13, "end": 19, "label": "framing_cue"}]
    tags = token_tags(offsets, spans, ["threat_claim", "framing_cue", "actor"])
    assert tags[0] == [IGNORE] * 3 and tags[-1] == [IGNORE] * 3
    assert [t[2] for t in tags[1:5]] == [1, 0, 0, 0]  # actor: B on "Moscow"
    assert [t[1] for t in tags[1:5]] == [0, 0, 1, 2]  # framing_cue: B I over "hyp ##e"
    assert all(t[0] == 0 for t in tags[1:5])


def test_span_decoding_widens_to_whole_words_and_scores():
    text = "Moscow calls it hype."
    offsets = [(-1, -1), (0, 3), (3, 6), (7, 12), (13, 15), (16, 20), (20, 21), (-1, -1)]
    probs = np.zeros((8, 1, 3))
    probs[:, 0, 0] = 1.0
    probs[2, 0] = [0.1, 0.8, 0.1]  # B on "cow": the span widens to "Moscow"
    probs[5, 0] = [0.3, 0.6, 0.1]
    (first, second) = decode_spans(probs, offsets, ["actor"], text)
    assert (first["text"], first["start"], first["end"]) == ("Moscow", 0, 6)
    assert first["score"] == pytest.approx(0.9)
    assert second["text"] == "hype" and second["score"] == pytest.approx(0.7)


def test_temperature_scaling_lowers_nll_on_overconfident_logits():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    logits = rng.normal(0, 1, (400, 3))
    logits[np.arange(400), labels] += 1.0
    logits *= 5  # overconfident
    fitted = fit_temperature(logits, labels, "single")
    assert fitted.temperature > 1.5
    assert fitted.nll_after < fitted.nll_before
    assert nll(logits, labels, "single", fitted.temperature) == pytest.approx(fitted.nll_after)
    before = expected_calibration_error(*confidence_and_correct(softmax(logits), labels, "single"))
    after = expected_calibration_error(*confidence_and_correct(softmax(logits, fitted.temperature), labels, "single"))
    assert after < before

    y = (rng.random((300, 4)) < 0.3).astype(float)
    multi_logits = (2 * y - 1) * 0.4 + rng.normal(0, 0.3, y.shape)  # underconfident
    multi = fit_temperature(multi_logits, y, "multi")
    assert multi.temperature < 1 and multi.nll_after < multi.nll_before
    assert sigmoid(multi_logits, multi.temperature).shape == y.shape


def test_no_validation_labels_leaves_temperature_at_one():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0), "single").temperature == 1.0


def test_ece_of_perfectly_calibrated_bins_is_zero():
    conf = np.array([0.8] * 10)
    correct = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([0, 0])) == pytest.approx(1.0)


def test_metrics_per_kind_with_stance_f_avg_and_missing_labels():
    dims = [
        {"name": "stance_x", "kind": "single", "labels": ["favor", "against", "none"], "target": {"id": "x"}},
        {"name": "frames", "kind": "multi", "labels": ["A", "B"]},
        {"name": "evidence", "kind": "spans", "labels": ["actor"]},
    ]
    rows = [
        {"stance_x": "favor", "frames": ["A"], "evidence": [{"start": 0, "end": 6, "label": "actor"}]},
        {"stance_x": "against", "frames": [], "evidence": None},
        {"stance_x": None, "frames": ["A", "B"], "evidence": [{"start": 3, "end": 8, "label": "actor"}]},
    ]
    probs = {
        "stance_x": np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]]),
        "frames": np.array([[0.9, 0.2], [0.1, 0.1], [0.7, 0.4]]),
    }
    spans = {"evidence": [[{"start": 0, "end": 6, "label": "actor"}], [], [{"start": 4, "end": 10, "label": "actor"}]]}
    report = evaluate_outputs(dims, rows, probs, spans)
    stance = report["dimensions"]["stance_x"]
    assert stance["n"] == 2  # the unlabeled row is skipped
    assert stance["per_label"]["favor"]["f1"] == pytest.approx(2 / 3)
    assert stance["per_label"]["against"]["f1"] == 0.0
    assert stance["f_avg"] == pytest.approx(1 / 3) and report["stance_f_avg"] == pytest.approx(1 / 3)
    assert stance["confusion"]["matrix"] == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]
    frames = report["dimensions"]["frames"]
    assert frames["micro_f1"] == pytest.approx(0.8)  # tp 2, predicted 2, gold 3
    assert frames["macro_f1"] == pytest.approx((1.0 + 0.0) / 2)
    evidence = report["dimensions"]["evidence"]
    assert evidence["n"] == 2
    assert evidence["exact"]["f1"] == pytest.approx(0.5) and evidence["partial"]["f1"] == pytest.approx(1.0)
    assert report["primary"] == pytest.approx(np.mean([stance["macro_f1"], 0.5, 1.0]))


def test_span_metrics_need_the_same_label_to_match():
    dim = {"labels": ["actor", "framing_cue"]}
    gold = [[{"start": 0, "end": 5, "label": "actor"}]]
    pred = [[{"start": 0, "end": 5, "label": "framing_cue"}]]
    scores = span_metrics(dim, gold, pred)
    assert scores["exact"]["f1"] == 0.0 and scores["partial"]["f1"] == 0.0


def test_validation_loss_also_skips_views_without_labels(model, tokenizer):
    """In eval mode with labels (the Trainer's validation loss) unlabelled views do not run either."""
    rows = [{**TEXTS[0], "stance_us_policy": "against"}, {**TEXTS[1], "threat_characterization": "genuine"}]
    batch = Collator(model.config)(featurize(rows, model.config, tokenizer))
    with torch.inference_mode():
        out = model(**batch)
    assert "stance_russia_china" not in out.logits and "stance_nato_enlargement" not in out.logits
    assert out.logits["stance_us_policy"][1].abs().sum() == 0  # row 1 has no us_policy label: not encoded
    assert out.logits["stance_us_policy"][0].abs().sum() > 0


def test_labelled_only_outputs_equal_the_full_run_where_labelled(model, tokenizer):
    from training.predict import run_model

    rows = [{**TEXTS[0], "stance_us_policy": "against"}, {**TEXTS[1], "threat_characterization": "genuine"}]
    full = run_model(model, tokenizer, rows, batch_size=4)
    part = run_model(model, tokenizer, rows, batch_size=4, labelled_only=True)
    assert np.allclose(part.logits["stance_us_policy"][0], full.logits["stance_us_policy"][0], atol=1e-5)
    assert np.allclose(part.logits["threat_characterization"][1], full.logits["threat_characterization"][1], atol=1e-5)
    assert not part.logits["stance_us_policy"][1].any() and not part.logits["stance_russia_china"].any()
    assert not part.logits["threat_characterization"][0].any()  # the plain view ran for row 1 only
    assert part.spans["evidence"][1] == full.spans["evidence"][1]


def test_frozen_lower_layers_get_no_gradients(schema, tokenizer):
    from training.modeling import freeze_lower_layers

    torch.manual_seed(0)
    fresh = MultiHeadModel.from_encoder(schema, max_seq_length=48)
    everything = sum(p.numel() for p in fresh.parameters())
    trainable = freeze_lower_layers(fresh, 4)
    assert 0 < trainable < everything / 2  # MiniLM-L6: embeddings (12M) + 4 of 6 layers frozen
    rows = [{**TEXTS[0], "threat_characterization": "genuine"}, {**TEXTS[1], "threat_characterization": "contested"}]
    batch = Collator(fresh.config)(featurize(rows, fresh.config, tokenizer))
    fresh.train()
    fresh(**batch).loss.backward()
    layers = fresh.encoder.encoder.layer
    assert all(p.grad is None for p in fresh.encoder.embeddings.parameters())
    assert all(p.grad is None for p in layers[3].parameters())
    assert all(p.grad is not None for p in layers[4].parameters())
    assert fresh.heads["threat_characterization"].weight.grad is not None
    with pytest.raises(ValueError, match="cannot freeze 7 layers: the encoder has 6 layers"):
        freeze_lower_layers(fresh, 7)


def _padding_seen_in_training(schema, monkeypatch, group_by_length: bool) -> tuple[int, int, int]:
    """Train one epoch (16 steps) on 64 rows of very different lengths: (padded tokens, real tokens, rows) seen."""
    from training.trainer import train_model
    from training.training_args import TrainingArguments

    seen = [0, 0, 0]
    original = MultiHeadModel.forward

    def spy(self, views, labels=None):
        if self.training:
            mask = views["text"]["attention_mask"]
            seen[0], seen[1], seen[2] = seen[0] + mask.numel(), seen[1] + int(mask.sum()), seen[2] + mask.shape[0]
        return original(self, views, labels)

    monkeypatch.setattr(MultiHeadModel, "forward", spy)
    rows = [
        {
            "text": " ".join(["word"] * (3 if i % 2 else 40)),
            "threat_characterization": "genuine" if i % 3 else "manufactured",
        }
        for i in range(64)
    ]
    args = TrainingArguments(
        max_steps=16,
        batch_size=4,
        max_length=48,
        progress=False,
        seed=1,
        threads=1,
        group_by_length=group_by_length,
        probe_epochs=0,  # the spy counts fine-tuning batches only
    )
    train_model({"train": rows}, schema, args)
    return seen[0], seen[1], seen[2]


@pytest.mark.usefixtures("torch_threads_restored")
def test_length_grouped_batches_pad_less_and_see_every_row(schema, monkeypatch):
    grouped_padded, grouped_real, grouped_rows = _padding_seen_in_training(schema, monkeypatch, True)
    random_padded, random_real, random_rows = _padding_seen_in_training(schema, monkeypatch, False)
    assert grouped_rows == random_rows == 64  # 16 steps x 4 rows: one epoch, every row once either way
    assert grouped_real == random_real  # the same tokens were trained on ...
    assert grouped_padded < 0.75 * random_padded  # ... with far less padding (short and long rows not mixed)


def test_attention_on_cuda_never_uses_cudnn_and_cpu_is_left_alone():
    from torch.backends import cuda

    from training.modeling import attention_kernels

    with attention_kernels("cpu"):
        assert cuda.cudnn_sdp_enabled()  # no constraint off CUDA
    with attention_kernels("cuda:0"):
        assert not cuda.cudnn_sdp_enabled()
        assert cuda.flash_sdp_enabled() and cuda.mem_efficient_sdp_enabled()
    assert cuda.cudnn_sdp_enabled()  # restored afterwards


def test_late_target_encoding_runs_one_pass_and_each_target_attends_its_own_way(schema, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = MultiHeadModel.from_encoder(schema, max_seq_length=48, target_encoding="late").eval()
    assert [v.id for v in model.config.views] == ["text"]  # one encoder pass per text instead of four
    stance = [d.name for d in schema.dimensions if d.target]
    assert sorted(model.target_queries) == sorted(stance)
    queries = [model.target_queries[name] for name in stance]
    assert all(q.abs().sum() > 0 for q in queries)  # started at each target name's embedding, not zeros
    assert not torch.equal(queries[0], queries[1])
    batch = pad_views(encode_views(tokenizer, model.config, TEXTS))
    views = {k: {n: t for n, t in v.items() if n != "offset_mapping"} for k, v in batch.items()}
    model.save_pretrained(tmp_path)
    loaded = MultiHeadModel.from_pretrained(tmp_path).eval()
    assert loaded.config.target_encoding == "late" and [v.id for v in loaded.config.views] == ["text"]
    with torch.inference_mode():
        before, after = model(views=views).logits, loaded(views=views).logits
    for dim in schema.dimensions:
        assert torch.equal(before[dim.name], after[dim.name]), dim.name
    # the attention weights differ per target: the same text gets a different pooled vector for each target
    from training.modeling import _attend

    with torch.inference_mode():
        hidden = model.encoder(**views["text"]).last_hidden_state
        pooled = [_attend(hidden, views["text"]["attention_mask"], q) for q in queries]
    assert not torch.allclose(pooled[0], pooled[1])


def test_an_unknown_target_encoding_is_refused():
    from training.training_args import TrainingArguments

    with pytest.raises(ValueError, match="target-encoding must be one of auto, pair, late"):
        TrainingArguments(target_encoding="cross")


def _stance_rows(targets_per_row: int, n: int = 4) -> list[dict]:
    names = ["stance_russia_china", "stance_us_policy", "stance_nato_enlargement"]
    return [{"text": f"row {i}", **{name: "none" for name in names[:targets_per_row]}} for i in range(n)]


def test_auto_target_encoding_is_late_when_rows_carry_several_targets(schema):
    from training.trainer import choose_target_encoding

    assert choose_target_encoding("auto", schema, _stance_rows(3)) == "late"  # pair would cost 4 passes a row
    assert choose_target_encoding("auto", schema, _stance_rows(2)) == "late"
    assert choose_target_encoding("auto", schema, _stance_rows(1)) == "pair"  # one pass either way (SemEval-like)
    assert choose_target_encoding("auto", schema, [{"text": "x", "frames": ["Political"]}]) == "pair"
    assert choose_target_encoding("pair", schema, _stance_rows(3)) == "pair"  # an explicit choice stands
    assert choose_target_encoding("late", schema, _stance_rows(1)) == "late"


def test_cpu_budget_cuts_epochs_by_the_tokens_of_labelled_views_only(schema, tokenizer):
    from training.modeling import MultiHeadConfig
    from training.trainer import budgeted_epochs, epoch_tokens
    from training.training_args import TrainingArguments

    config = MultiHeadConfig.from_schema(schema, target_encoding="pair", max_seq_length=48)
    rows = [{**TEXTS[0], "threat_characterization": "genuine"}, {**TEXTS[1], "stance_us_policy": "against"}]
    items = featurize(rows, config, tokenizer)
    plain, pair = len(items[0]["views"]["text"]["input_ids"]), len(items[1]["views"]["text|us_policy"]["input_ids"])
    assert epoch_tokens(rows, items, config) == plain + pair  # the unlabelled views cost nothing
    both = [{**row, "threat_characterization": "genuine"} for row in rows]  # both rows on the plain pass
    longest = max(len(item["views"]["text"]["input_ids"]) for item in items)
    assert longest > plain  # the second text is longer: the first one is padded to it
    assert epoch_tokens(both, items, config, batch_size=2) == 2 * longest + pair
    assert epoch_tokens(both, items, config, batch_size=1) == plain + longest + pair  # no padding in batches of 1
    tokens = plain + pair

    def epochs(**kwargs) -> float:
        return budgeted_epochs(TrainingArguments(**kwargs), "cpu", rows, items, config)

    assert epochs(epochs=5, cpu_budget_tokens=tokens * 2) == 2.0
    assert epochs(epochs=5, cpu_budget_tokens=tokens * 100) == 5.0  # never more than asked
    assert epochs(epochs=5, cpu_budget_tokens=1) == 1.0  # never below one epoch
    assert epochs(epochs=0.5, cpu_budget_tokens=1) == 0.5
    assert epochs(epochs=5, cpu_budget_tokens=0) == 5.0  # 0: no budget
    assert epochs(epochs=5, max_steps=3, cpu_budget_tokens=1) == 5.0  # max_steps decides instead
    assert budgeted_epochs(TrainingArguments(epochs=5, cpu_budget_tokens=1), "cuda", rows, items, config) == 5.0
    wide = MultiHeadConfig.from_schema(schema, target_encoding="pair", max_seq_length=48)
    wide.encoder_config = {**wide.encoder_config, "hidden_size": 768}  # 4x the cost per token
    args = TrainingArguments(epochs=5, cpu_budget_tokens=tokens * 8)
    assert budgeted_epochs(args, "cpu", rows, items, wide) == 2.0


@pytest.mark.usefixtures("torch_threads_restored")
def test_probe_fits_the_heads_on_cached_encoder_states_and_leaves_the_encoder_alone(schema, tokenizer):
    from training.trainer import _CachedEncoder, probe_heads
    from training.training_args import TrainingArguments

    torch.manual_seed(0)
    fresh = MultiHeadModel.from_encoder(schema, max_seq_length=48, target_encoding="late")
    rows = [
        {**TEXTS[0], "threat_characterization": "manufactured", "stance_us_policy": "against", "frames": ["Political"]},
        {**TEXTS[1], "threat_characterization": "genuine", "stance_us_policy": "none", "frames": []},
    ]
    items = featurize(rows, fresh.config, tokenizer)
    batch = Collator(fresh.config)(items)
    encoder_before = {k: v.clone() for k, v in fresh.encoder.state_dict().items()}
    query_before = fresh.target_queries["stance_us_policy"].detach().clone()
    fresh.eval()
    with torch.no_grad():
        loss_before = float(fresh(**batch).loss)
    probe_heads(fresh, rows, items, Collator(fresh.config), TrainingArguments(probe_epochs=40, threads=1), "cpu")
    fresh.eval()
    with torch.no_grad():
        loss_after = float(fresh(**batch).loss)
    assert loss_after < 0.5 * loss_before  # the heads learned the two rows
    assert not torch.equal(fresh.target_queries["stance_us_policy"], query_before)  # late queries learn too
    for name, value in fresh.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[name]), name  # the encoder is untouched and back in place
    assert not isinstance(fresh.encoder, _CachedEncoder)
    # the cache serves the encoder's own states (eval mode), whatever the batch-mates and padding
    cached = _CachedEncoder(fresh.encoder)
    views = batch["views"]["text"]
    with torch.no_grad():
        real = fresh.encoder(**views).last_hidden_state
        first = cached(**views).last_hidden_state
        again = cached(**{k: v[1:] for k, v in views.items()}).last_hidden_state
    mask = views["attention_mask"].bool()
    assert torch.allclose(first[mask], real[mask], atol=2e-2)
    assert torch.equal(again[0], first[1, : again.shape[1]])


@pytest.mark.usefixtures("torch_threads_restored")
def test_fine_tuning_starts_from_the_probed_heads(schema, tokenizer):
    from training.trainer import train_model
    from training.training_args import TrainingArguments

    rows = [
        {
            "text": f"{'Moscow calls it propaganda' if i % 2 else 'Troops mass at the border'} {i}.",
            "threat_characterization": "manufactured" if i % 2 else "genuine",
        }
        for i in range(12)
    ]

    def loss_after(probe_epochs: int) -> tuple[float, dict]:
        # one fine-tuning step, taken at warm-up's zero learning rate: what serves is what fine-tuning started from
        args = TrainingArguments(
            epochs=5,
            max_steps=1,
            batch_size=4,
            max_length=32,
            probe_epochs=probe_epochs,
            progress=False,
            threads=1,
            seed=3,
        )
        result = train_model({"train": rows}, schema, args)
        batch = Collator(result.model.config)(featurize(rows, result.model.config, tokenizer))
        with torch.no_grad():
            return float(result.model(**batch).loss), result.settings

    probed, settings = loss_after(20)
    plain, _ = loss_after(0)
    assert probed < 0.5 * plain  # the heads came out of the probe fitted, not freshly initialised
    # no row labels the evidence spans: their head is silenced (no spans) rather than left as initialised
    assert settings == {
        "target_encoding": "pair",
        "epochs": 5.0,
        "probe_epochs": 20,
        "unlabelled_span_dimensions": ["evidence"],
    }
