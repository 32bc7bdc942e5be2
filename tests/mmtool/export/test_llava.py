"""`mmtool export-llava`: transformers' own LlavaForConditionalGeneration reproduces mmtool's logits and tokens."""
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mmtool.errors import MmtoolError
from mmtool.export.llava import export_llava
from stage2_projector.checkpoint import build_vlm, load_vlm, save_vlm
from stage2_projector.config import AlignConfig, ModelConfig
from stage3_llm.generate import generate, prompt_ids
from tests.stage1_clip.test_train_e2e import mmtool
from tests.helpers.tiny_vlm import save_tiny_clip, save_tiny_llm

pytestmark = pytest.mark.slow


def aligned_tiny(tmp_path, vision_type="vit", projector="mlp2x_gelu", token_grid=None):
    clip_path, llm_dir = save_tiny_clip(tmp_path / "clip.pt", vision_type), save_tiny_llm(tmp_path / "llm")
    torch.manual_seed(0)
    bundle = build_vlm(AlignConfig(model=ModelConfig(vision=str(clip_path), llm=str(llm_dir), projector=projector,
                                                     token_grid=token_grid)), clip_path)
    with torch.no_grad():  # a trained-looking projector: larger than its init, so image features matter
        for param in bundle.model.projector.parameters():
            param.mul_(4)
    save_vlm(tmp_path / "vlm.pt", bundle.record, bundle.model.state_dict())
    return tmp_path / "vlm.pt"


def test_exported_llava_matches_mmtool_logits_and_greedy_tokens(tmp_path):
    checkpoint = aligned_tiny(tmp_path)
    mmtool("export-llava", "--model", checkpoint, "--out", tmp_path / "hf")
    bundle = load_vlm(checkpoint)
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")

    image_file = tmp_path / "sun.png"
    pixels = torch.rand(32, 32, 3).mul(255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(image_file)  # square, at the tower's size: both preprocessors crop nothing
    question = "What is shown?"
    image = bundle.preprocess(image_file.read_bytes())
    ids = prompt_ids(bundle.tokenizer, question, bundle.num_image_tokens)
    prompt = bundle.tokenizer.apply_chat_template([{"role": "user", "content": f"<image>\n{question}"}],
                                                  tokenize=False, add_generation_prompt=True)
    inputs = processor(images=Image.open(image_file), text=prompt, return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == ids
    torch.testing.assert_close(inputs["pixel_values"][0], image, atol=1e-5, rtol=0)

    with torch.no_grad():
        ours = bundle.model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), image[None])["logits"]
        theirs = hf(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    pixel_values=inputs["pixel_values"]).logits
        torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
        hf_tokens = hf.generate(**inputs, max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    assert generate(bundle.model, bundle.tokenizer, image, question, bundle.num_image_tokens, 12) == hf_tokens
    assert len(hf_tokens) >= 3


def test_only_vit_towers_full_grids_and_two_layer_projectors_export(tmp_path):
    for kind, projector, grid, message in (
            ("efficientnet_lite0", "mlp2x_gelu", None, "no transformers LLaVA counterpart"),
            ("vit", "linear", None, "two-layer projector"), ("vit", "mlp2x_gelu", 2, "model.token_grid")):
        folder = tmp_path / f"{kind}_{projector}_{grid}"
        folder.mkdir()
        with pytest.raises(MmtoolError, match=message):
            export_llava(load_vlm(aligned_tiny(folder, kind, projector, grid)), folder / "hf")


def test_lora_adapters_are_merged_into_the_exported_weights(tmp_path):
    from peft import LoraConfig, get_peft_model

    bundle = load_vlm(aligned_tiny(tmp_path))
    torch.manual_seed(1)  # init_lora_weights=False: random non-zero B, so the adapter changes the logits
    bundle.model.llm = get_peft_model(bundle.model.llm, LoraConfig(r=4, target_modules=["q_proj", "down_proj"],
                                                                   init_lora_weights=False))
    ids = torch.tensor([prompt_ids(bundle.tokenizer, "What?", bundle.num_image_tokens)])
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        with_adapter = bundle.model(ids, torch.ones_like(ids), image)["logits"]
        with bundle.model.llm.disable_adapter():
            base = bundle.model(ids, torch.ones_like(ids), image)["logits"]
    assert not torch.allclose(with_adapter, base, atol=1e-3)
    export_llava(bundle, tmp_path / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = hf(input_ids=ids, pixel_values=image).logits
    torch.testing.assert_close(theirs, with_adapter, atol=1e-4, rtol=1e-4)
