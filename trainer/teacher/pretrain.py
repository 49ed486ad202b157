"""pretrain-ctclip: train a CT-CLIP (the classes of ``pipeline.ctclip``) on CT and report pairs.

Loss: symmetric InfoNCE between the batch's CT latents and report latents at a
learnt logit scale (``temperature`` = its log, clamped), plus the quantiser's
commitment loss; the quantiser learns its codebook by moving averages (see
:mod:`pipeline.ctclip.quantizer`). AdamW, linear warm-up then cosine decay.

The run resumes from ``checkpoints/latest.pt``: model, optimiser, step, the
epoch's sampler position (batches are a pure function of seed and epoch) and
RNG states; ``metrics.jsonl`` is cut back to the lines written before that
checkpoint. A checkpoint from another configuration is refused. At the end the
best checkpoint (validation zero-shot macro AUROC over the labels visible in
projection, report-vocabulary prompts; the latest without a validation set) is
exported to ``export/`` for embed-ct.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from schemas.errors import PipelineError
from schemas.pretrain import PretrainConfig
from trainer.evaluation.zeroshot import zero_shot_probabilities
from trainer.teacher import data as tdata
from trainer.teacher import zeroshot
from trainer.teacher.labels import REPORT_VOCAB, prompt_sets, visible_labels

logger = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1
BEST_METRIC = f"valid/zeroshot_visible/{REPORT_VOCAB}"


class PretrainRunError(PipelineError):
    """The run folder holds another run, or a checkpoint cannot be used."""


@dataclass
class PretrainResult:
    out: Path
    steps: int
    epochs: int
    best: dict | None
    export: Path
    wall_s: float


def resolved_model_config(cfg: PretrainConfig, vocab_tokens: int):
    """The named config with ``text.vocab_size`` = the vocabulary's size (no unused embedding rows)."""
    from pipeline.ctclip.config import get_config
    from schemas.ctclip import CTCLIPConfig

    base = get_config(cfg.model).model_dump(mode="json")
    base["text"]["vocab_size"] = vocab_tokens
    return CTCLIPConfig.model_validate(base)


def vocab_rows(tokenizer) -> int:
    """Embedding rows the text model needs: one per line of vocab.txt (token id = line number)."""
    return max(tokenizer.vocab.values()) + 1


def _lr_at(cfg: PretrainConfig, step: int, total: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def info_nce(ct: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of the (B, B) similarity matrix against the diagonal."""
    logits = scale * ct @ text.T
    target = torch.arange(len(ct))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _idf_anchors(units: list[set], dim: int, seed: int) -> np.ndarray:
    """(N, dim) unit vectors: per row, the sum of a fixed random vector per unit (sentence or n-gram) it holds,
    weighted by the unit's inverse document frequency over the distinct reports (a unit every report has
    weighs nothing). Rows with equal units get equal anchors."""
    reports = {frozenset(u) for u in units}
    df: dict = {}
    for rep in reports:
        for u in rep:
            df[u] = df.get(u, 0) + 1
    rng = np.random.default_rng([seed, 7])
    vec = {u: rng.standard_normal(dim) for u in sorted(df)}
    out = np.zeros((len(units), dim))
    for i, row in enumerate(units):
        for u in row:
            out[i] += np.log(len(reports) / df[u]) * vec[u] / np.sqrt(dim)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def sentence_anchors(pairs: tdata.PairSet, dim: int, seed: int) -> np.ndarray:
    """Anchors from whole sentences: two phrasings of one finding start unrelated."""
    return _idf_anchors([{tuple(s) for s in row} for row in pairs.sentences], dim, seed)


def word_anchors(pairs: tdata.PairSet, dim: int, seed: int) -> np.ndarray:
    """Anchors from the token unigrams and bigrams of each sentence (a random projection of the report's binary
    TF-IDF): phrasings of one finding share its words ("emphysema"), so they start close; bigrams keep
    "no effusion" apart from "effusion"."""
    units = []
    for row in pairs.sentences:
        grams: set = set()
        for s in row:
            grams.update((t,) for t in s)
            grams.update(zip(s, s[1:]))
        units.append(grams)
    return _idf_anchors(units, dim, seed)


ANCHORS = {"sentence": sentence_anchors, "word": word_anchors}


class Trainer:
    def __init__(self, cfg: PretrainConfig, tokenizer=None):
        from pipeline.ctclip.model import CTCLIP
        from pipeline.ctclip.quantizer import QuantizerLearning
        from pipeline.ctclip.text import load_tokenizer

        self.cfg = cfg
        self.out = cfg.out
        # load_tokenizer refuses a folder without a usable vocab.txt (missing, not UTF-8, not a BERT vocabulary)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
        self.model_cfg = resolved_model_config(cfg, vocab_rows(self.tokenizer))
        torch.manual_seed(cfg.seed)
        self.model = CTCLIP(self.model_cfg)
        with torch.no_grad():
            self.model.temperature.fill_(cfg.temperature_init)
            for module in self.model.text_transformer.modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                    module.weight.normal_(0.0, cfg.text_init_std)
        self.vq = self.model.visual_transformer.vq  # None in a config without the quantiser
        if self.vq is not None:
            self.vq.start_learning(
                QuantizerLearning(
                    decay=cfg.vq_decay,
                    commitment_weight=cfg.vq_commitment,
                    dead_code_threshold=cfg.vq_dead_code_threshold,
                )
            )
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or "temperature" in name else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
        )
        vocab_dir = self.out / "vocab"
        vocab_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cfg.tokenizer / "vocab.txt", vocab_dir / "vocab.txt")
        folder = self.out / "volumes"
        self.train = tdata.load_pairs(
            cfg.manifest, self.tokenizer, self.model_cfg, cfg.ct, folder, "train", cfg.max_failures
        )
        self.valid = (
            tdata.load_pairs(
                cfg.valid_manifest, self.tokenizer, self.model_cfg, cfg.ct, folder, "valid", cfg.max_failures
            )
            if cfg.valid_manifest
            else None
        )
        self.steps_per_epoch = len(tdata.epoch_batches(self.train, 0, cfg.seed, cfg.batch_size))
        if self.steps_per_epoch == 0:
            raise tdata.PretrainDataError(
                f"{cfg.manifest}: {len(self.train.scan_groups())} scans, fewer than --batch-size {cfg.batch_size}"
            )
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.step = self.epoch = self.epoch_step = 0
        self.best: dict | None = None
        self.prompts = prompt_sets()
        self.anchors = (
            ANCHORS[cfg.anchor_units](self.train, self.model_cfg.dim_latent, cfg.seed) if cfg.anchor_epochs else None
        )

    # --- state -------------------------------------------------------------------------------------------
    def state(self) -> dict:
        metrics = self.out / "metrics.jsonl"
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "rng": torch.get_rng_state(),
            "config": json.dumps(self.cfg.identity(), sort_keys=True),
            "model_config": self.model_cfg.model_dump_json(),
            "best": json.dumps(self.best),
            "metrics_lines": sum(1 for _ in metrics.open()) if metrics.exists() else 0,
        }

    def save(self, also_best: bool = False) -> None:
        from pipeline.runtime import atomic_path

        folder = self.out / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        state = self.state()
        with atomic_path(folder / f"step_{self.step}.pt") as tmp:
            torch.save(state, tmp)
        for name in ["latest.pt"] + (["best.pt"] if also_best else []):
            with atomic_path(folder / name) as tmp:
                shutil.copyfile(folder / f"step_{self.step}.pt", tmp)
        steps = sorted(folder.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        for old in steps[: -self.cfg.keep_checkpoints]:
            old.unlink()

    def resume(self) -> bool:
        path = self.out / "checkpoints" / "latest.pt"
        if not path.is_file():
            return False
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise PretrainRunError(
                f"{path}: unreadable checkpoint ({type(e).__name__}: {e}); delete it to restart"
            ) from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise PretrainRunError(f"{path}: not a pretrain-ctclip checkpoint; use another --out")
        ours = json.dumps(self.cfg.identity(), sort_keys=True)
        if ckpt["model_config"] != self.model_cfg.model_dump_json():
            raise PretrainRunError(
                f"{self.out}: holds a run of another model config than {self.cfg.model!r} resolves to now; "
                "use another --out"
            )
        if ckpt["config"] != ours:
            old, new = json.loads(ckpt["config"]), json.loads(ours)
            diff = [
                f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            ]
            raise PretrainRunError(
                f"{self.out}: holds a run with other settings ({'; '.join(diff)[:300]}); use another --out or the same options"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step, self.epoch, self.epoch_step = int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["epoch_step"])
        torch.set_rng_state(ckpt["rng"])
        self.best = json.loads(ckpt["best"])
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():
            lines = metrics.read_text().splitlines(keepends=True)[: int(ckpt["metrics_lines"])]
            metrics.write_text("".join(lines))
        logger.info("resumed %s at step %d (epoch %d, step %d of it)", path, self.step, self.epoch, self.epoch_step)
        return True

    def log_metrics(self, record: dict) -> None:
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    # --- work ---------------------------------------------------------------------------------------------
    def batch_tensors(self, pairs: tdata.PairSet, rows: list[int], rng: np.random.Generator | None):
        """Volumes (B, C, D, H, W); token ids and mask of the distinct texts; per text of each row, which
        distinct text it is and the row it belongs to. One text per row ('cls' pooling) or one per chosen
        sentence ('sentence_mean'). Reports share most sentences ('No pleural effusion.'), so a batch of 32
        holds ~350 sentences but ~120 distinct ones: each is encoded once."""
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        max_len = self.model_cfg.text.max_length
        per_sentence = self.model_cfg.text.pooling == "sentence_mean"
        texts, owner = [], []
        for k, r in enumerate(rows):
            sentences = pairs.sentences[r]
            if rng is not None:
                sentences = tdata.choose_sentences(sentences, rng, self.cfg.report_subset_prob)
            parts = [[s] for s in sentences] if per_sentence else [sentences]
            for part in parts:
                texts.append(tdata.text_ids(part, cls_id, sep_id, max_len))
                owner.append(k)
        distinct, which = tdata.distinct_texts(texts)
        ids, mask = tdata.pad_batch(distinct, self.tokenizer.pad_token_id)
        idx = np.sort(np.asarray(rows))
        order = np.argsort(np.argsort(rows))
        vol = torch.from_numpy(np.asarray(pairs.volumes[idx], dtype=np.float32)[order])
        return vol, ids, mask, torch.tensor(which), torch.tensor(owner)

    def text_latents(
        self, ids: torch.Tensor, mask: torch.Tensor, which: torch.Tensor, owner: torch.Tensor, rows: int
    ) -> torch.Tensor:
        """One latent per row: the text's CLS latent, or the normalised mean of its sentences' (as
        :func:`pipeline.ctclip.text.encode_texts` computes it at inference)."""
        z = self.model.encode_text(ids, mask)[which]
        if self.model_cfg.text.pooling == "cls":
            return z
        sums = torch.zeros(rows, z.shape[1], dtype=z.dtype).index_add(0, owner, z)
        return F.normalize(sums, dim=-1)

    def train_step(self, rows: list[int]) -> dict:
        rng = np.random.default_rng([self.cfg.seed, self.epoch, self.epoch_step, 1])
        vol, ids, mask, which, owner = self.batch_tensors(self.train, rows, rng)
        for group in self.optimizer.param_groups:
            group["lr"] = _lr_at(self.cfg, self.step, self.total_steps)
        self.model.train()
        feats = self.model.visual_features(vol, "fp32")
        ct = self.model.latent_from_quantized(feats.quantized)
        text = self.text_latents(ids, mask, which, owner, len(rows))
        scale = self.model.temperature.exp().clamp(max=self.cfg.max_logit_scale)
        if self.anchors is not None and self.epoch < self.cfg.anchor_epochs:
            target = torch.from_numpy(self.anchors[rows])
            clip = 0.5 * (info_nce(ct, target, scale) + info_nce(text, target, scale))
        else:
            clip = info_nce(ct, text, scale)
        loss = clip + self.commit_loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        with torch.no_grad():
            self.model.temperature.clamp_(max=math.log(self.cfg.max_logit_scale))
        record = {
            "loss": float(loss.detach()),
            "clip_loss": float(clip.detach()),
            "logit_scale": float(scale.detach()),
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if self.vq is not None:
            record["commit_loss"] = float(self.vq.commit_loss.detach())
            record["codes_used"] = int((self.vq._codebook.cluster_size > self.cfg.vq_dead_code_threshold).sum())
            record["codes_restarted"] = self.vq.restarted_codes
        return record

    def commit_loss(self) -> torch.Tensor:
        """The quantiser's weighted commitment loss of the last forward pass (0 without a quantiser)."""
        if self.vq is None:
            return torch.zeros(())
        return self.cfg.vq_commitment * self.vq.commit_loss

    @torch.no_grad()
    def encode_set(self, pairs: tdata.PairSet, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """CT latents and whole-report latents of every row (eval mode: frozen quantiser)."""
        self.model.eval()
        cts, texts = [], []
        for s in range(0, len(pairs), batch):
            rows = list(range(s, min(s + batch, len(pairs))))
            vol, ids, mask, which, owner = self.batch_tensors(pairs, rows, None)
            cts.append(self.model.encode_ct(vol, "fp32").numpy())
            texts.append(self.text_latents(ids, mask, which, owner, len(rows)).numpy())
        return np.concatenate(cts), np.concatenate(texts)

    def validate(self) -> dict:
        assert self.valid is not None
        ct, text = self.encode_set(self.valid)
        scale = float(self.model.temperature.detach().exp().clamp(max=self.cfg.max_logit_scale))
        # InfoNCE over the whole valid set, one reconstruction per scan (as in training batches).
        rows = [g[0] for g in self.valid.scan_groups()]
        loss = float(info_nce(torch.from_numpy(ct[rows]), torch.from_numpy(text[rows]), torch.tensor(scale)))
        record: dict[str, Any] = {"loss": loss}
        lat = zeroshot.prompt_latents(self.model, self.tokenizer, self.prompts)
        seen = visible_labels()
        for name, p in lat.items():
            per = zeroshot.auroc_per_label(
                zero_shot_probabilities(ct, p["positive"], p["negative"], scale), self.valid.labels
            )
            record[f"zeroshot_all/{name}"] = zeroshot.macro(per)
            record[f"zeroshot_visible/{name}"] = zeroshot.macro(per, seen)
            if name == REPORT_VOCAB:
                record["per_label"] = per
        # The held-out reports' own latents against the prompts: what the text side alone can do.
        p = lat[REPORT_VOCAB]
        per = zeroshot.auroc_per_label(
            zero_shot_probabilities(text, p["positive"], p["negative"], scale), self.valid.labels
        )
        record["report_zeroshot_visible"] = zeroshot.macro(per, seen)
        return record

    def run(self) -> PretrainResult:
        t0 = time.perf_counter()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.resume()
        from tqdm import tqdm

        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="pretrain-ctclip",
            unit="step",
            disable=not self.cfg.progress,
        )
        while self.epoch < self.cfg.epochs:
            batches = tdata.epoch_batches(self.train, self.epoch, self.cfg.seed, self.cfg.batch_size)
            while self.epoch_step < len(batches):
                m = self.train_step(batches[self.epoch_step])
                self.step += 1
                self.epoch_step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.3f}", **({"codes": m["codes_used"]} if "codes_used" in m else {}))
                if self.step % 10 == 0 or self.epoch_step == len(batches):
                    self.log_metrics({"step": self.step, "epoch": self.epoch, "split": "train", **m})
                if self.step % self.cfg.checkpoint_every == 0 and self.epoch_step < len(batches):
                    self.save()
            is_best = False
            if self.valid is not None:
                v = self.validate()
                self.log_metrics({"step": self.step, "epoch": self.epoch, "split": "valid", **v})
                value = v["zeroshot_visible/" + REPORT_VOCAB]
                logger.info(
                    "epoch %d: valid loss %.3f, zero-shot macro AUROC (visible, report prompts) %.3f, "
                    "(visible, 'There is {p}.') %.3f, report latents %.3f",
                    self.epoch,
                    v["loss"],
                    value,
                    v["zeroshot_visible/x2ct_clip"],
                    v["report_zeroshot_visible"],
                )
                if self.best is None or value > self.best["value"]:
                    self.best = {"metric": BEST_METRIC, "value": value, "step": self.step, "epoch": self.epoch}
                    is_best = True
            else:
                self.best = {"metric": "latest", "value": None, "step": self.step, "epoch": self.epoch}
                is_best = True
            self.epoch += 1
            self.epoch_step = 0
            self.save(also_best=is_best)
        bar.close()
        export = self.export()
        return PretrainResult(self.out, self.step, self.epoch, self.best, export, time.perf_counter() - t0)

    def export(self) -> Path:
        return export_run(self.out)


def write_run_config(cfg: PretrainConfig, model_cfg) -> None:
    """``config.json``: the options, the resolved model config and provenance (inputs' identities)."""
    from pipeline._version import __version__
    from pipeline.runtime import atomic_write_text
    from schemas.manifest import manifest_sha256
    from schemas.provenance import Provenance, file_sha256, json_sha256

    prov = Provenance(
        stage="pretrain-ctclip",
        software_version=__version__,
        config=cfg.model_dump(mode="json"),
        config_sha256=json_sha256(cfg.identity()),
        manifest_sha256=manifest_sha256(cfg.manifest),
    )
    payload = {
        "config": cfg.model_dump(mode="json"),
        "model_config": model_cfg.model_dump(mode="json"),
        "provenance": prov.model_dump(mode="json"),
        "valid_manifest_sha256": manifest_sha256(cfg.valid_manifest) if cfg.valid_manifest else None,
        "vocab_sha256": file_sha256(cfg.tokenizer / "vocab.txt"),
    }
    atomic_write_text(cfg.out / "config.json", json.dumps(payload, indent=2) + "\n")


def run_pretrain(cfg: PretrainConfig) -> PretrainResult:
    """The whole run under the output lock, logging to ``out.log``."""
    from pipeline.ctclip.text import load_tokenizer
    from pipeline.runtime import log_to_file, make_folder, output_lock, refuse_foreign_folder, refuse_non_folder

    refuse_non_folder(cfg.out, "a pretrain-ctclip run")
    # A user's non-empty folder is never written into; a run of ours (resumed) has its config or log.
    refuse_foreign_folder(cfg.out, ("config.json", "checkpoints", "out.log"), "a pretrain-ctclip run")
    tokenizer = load_tokenizer(cfg.tokenizer)  # a bad vocab.txt is refused before the run folder is made
    make_folder(cfg.out, cfg.out)
    with output_lock(cfg.out, "pretrain-ctclip"), log_to_file(cfg.out / "out.log"):
        trainer = Trainer(cfg, tokenizer)
        write_run_config(cfg, trainer.model_cfg)
        logger.info(
            "pretrain-ctclip: %d train pairs (%d scans), %s valid, %d steps/epoch x %d epochs, model %s",
            len(trainer.train),
            len(trainer.train.scan_groups()),
            len(trainer.valid) if trainer.valid else "no",
            trainer.steps_per_epoch,
            cfg.epochs,
            cfg.model,
        )
        return trainer.run()


def export_run(run: Path, checkpoint: str = "best") -> Path:
    """``RUN/export/``: a checkpoint's weights as a plain CT-CLIP state dict (what embed-ct loads), its model
    config, the vocabulary and provenance (the options, the inputs' sha256, the validation figures of that step)."""
    from pipeline.ctclip.checkpoint import save_ctclip
    from pipeline.ctclip.model import CTCLIP
    from pipeline.runtime import atomic_write_text
    from schemas.ctclip import CTCLIPConfig

    meta_path = run / "config.json"
    ckpt_path = run / "checkpoints" / f"{checkpoint}.pt"
    if not meta_path.is_file() or not ckpt_path.is_file():
        raise PretrainRunError(f"{run}: no config.json or checkpoints/{checkpoint}.pt; not a pretrain-ctclip run yet")
    meta = json.loads(meta_path.read_text())
    model_cfg = CTCLIPConfig.model_validate(meta["model_config"])
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = CTCLIP(model_cfg)
    model.load_state_dict(state["model"])
    folder = run / "export"
    folder.mkdir(parents=True, exist_ok=True)
    sha = save_ctclip(model, folder / "ctclip.pt")
    atomic_write_text(folder / "model_config.json", model_cfg.model_dump_json(indent=2) + "\n")
    shutil.copyfile(run / "vocab" / "vocab.txt", folder / "vocab.txt")
    step = int(state["step"])
    valid = [
        r
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r.get("split") == "valid" and r["step"] == step
    ]
    record = {
        "checkpoint_sha256": sha,
        "checkpoint": checkpoint,
        "step": step,
        "epoch": int(state["epoch"]),
        "best": json.loads(state["best"]),
        "valid_metrics": valid[-1] if valid else None,
        "config": meta["config"],
        "manifest_sha256": meta["provenance"]["manifest_sha256"],
        "valid_manifest_sha256": meta["valid_manifest_sha256"],
        "vocab_sha256": meta["vocab_sha256"],
        "software_version": meta["provenance"]["software_version"],
    }
    atomic_write_text(folder / "provenance.json", json.dumps(record, indent=2) + "\n")
    logger.info("exported %s (step %d) to %s (sha256 %s)", ckpt_path.name, step, folder, sha)
    return folder
