"""Tiny stage-2 parts built in seconds: a random-weight stage-1 checkpoint and a random tiny Llama folder."""
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from stage1_clip.checkpoint import save_clip
from stage1_clip.config import ClipConfig, ModelConfig, TextConfig, VisionConfig
from stage1_clip.model import CLIP
from stage1_clip.tokenizer import SentencePieceTokenizer
from tests.helpers.tiny_llm import CHATML_TEMPLATE

CORPUS = ["a grinning face with big eyes", "a red apple", "cat face with tears of joy", "a rocket in the sky",
          "green heart", "smiling face with sunglasses", "Describe this image briefly.", "What is shown?"]


def save_tiny_clip(path: Path, vision_type: str = "vit", seed: int = 0, head: str = "linear") -> Path:
    """A random-weight ViT (image 32, patch 8: 16 patch tokens, width 32, 2 blocks) or EfficientNet-Lite0 CLIP."""
    torch.manual_seed(seed)
    vision = (VisionConfig(type="vit", image_size=32, patch_size=8, width=32, layers=2, heads=2)
              if vision_type == "vit" else VisionConfig(type=vision_type, image_size=64, pretrained=False))
    cfg = ClipConfig(model=ModelConfig(embed_dim=32, head=head, vision=vision,
                                       text=TextConfig(context_length=16, width=32, layers=1, heads=2)))
    tokenizer = SentencePieceTokenizer.train(CORPUS * 20, 60)
    model = CLIP(cfg.model, cfg.loss, tokenizer.vocab_size)
    save_clip(path, cfg, model.state_dict(), tokenizer, model)
    return path


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=512, tie_word_embeddings=False))


def chatml_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE with SmolLM2's kind of specials and ChatML template, and no `<image>` token (as SmolLM2)."""
    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<|im_start|>",
                                        eos_token="<|im_end|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def save_tiny_llm(folder: Path, corpus: list[str] = CORPUS, seed: int = 0) -> Path:
    """A Hugging Face folder (config, weights, tokenizer with a chat template) of a random 2-layer Llama."""
    tokenizer = chatml_tokenizer(corpus)
    model = tiny_llama(len(tokenizer), seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_vlm(folder: Path) -> Path:
    """An untrained aligned checkpoint folder/vlm.pt on a tiny ViT CLIP (folder/clip.pt) and tiny Llama (folder/llm)."""
    from stage2_projector.checkpoint import build_vlm, save_vlm
    from stage2_projector.config import AlignConfig, ModelConfig

    clip_path, llm_dir = save_tiny_clip(folder / "clip.pt"), save_tiny_llm(folder / "llm")
    torch.manual_seed(0)
    fresh = build_vlm(AlignConfig(model=ModelConfig(vision=str(clip_path), llm=str(llm_dir))), clip_path)
    save_vlm(folder / "vlm.pt", fresh.record, fresh.model.state_dict())
    return folder / "vlm.pt"
