"""Within-group retrieval (candidates restricted to the query's label group) against a naive per-query loop."""
import torch

from stage1_clip.evaluate import retrieval_recall, within_group_recall


def naive_within_group(image_emb, text_emb, captions, labels, k):
    """Python loops: rank the query's own group only; a hit is any candidate carrying the query's caption."""
    out = {}
    for direction in ("i2t", "t2i"):
        queries, candidates = (image_emb, text_emb) if direction == "i2t" else (text_emb, image_emb)
        hits, chance, counted = 0, 0.0, 0
        for q in range(len(captions)):
            group = [c for c in range(len(captions)) if labels[c] == labels[q]]
            matches = [c for c in group if captions[c] == captions[q]]
            if len(matches) == len(group):
                continue  # no negative among the candidates
            scores = sorted(((float(queries[q] @ candidates[c]), c) for c in group), reverse=True)
            hits += any(c in matches for _, c in scores[:k])
            chance += len(matches) / len(group)
            counted += 1
        out[direction] = hits / counted
        out["chance"] = chance / counted
        out["queries"] = counted
    return out


def test_within_group_recall_matches_naive_loop():
    gen = torch.Generator().manual_seed(0)
    n = 60
    labels = [f"g{int(i)}" for i in torch.randint(0, 7, (n,), generator=gen)]
    labels[0] = "alone"  # a one-item group: left out
    captions = [f"c{int(i)}" for i in torch.randint(0, 45, (n,), generator=gen)]  # duplicates, some across groups
    captions[1], captions[2], labels[1], labels[2] = "twin", "twin", "pair", "pair"  # a group of one caption
    image_emb = torch.nn.functional.normalize(torch.randn(n, 8, generator=gen), dim=-1)
    text_emb = torch.nn.functional.normalize(torch.randn(n, 8, generator=gen), dim=-1)
    metrics = within_group_recall(image_emb, text_emb, captions, labels, "subgroup", ks=(1, 3))
    for k in (1, 3):
        naive = naive_within_group(image_emb, text_emb, captions, labels, k)
        assert metrics["subgroup_queries"] == naive["queries"] == n - 3
        assert abs(metrics[f"subgroup_i2t_r{k}"] - naive["i2t"]) < 1e-6
        assert abs(metrics[f"subgroup_t2i_r{k}"] - naive["t2i"]) < 1e-6
        assert abs(metrics["subgroup_chance_r1"] - naive["chance"]) < 1e-6
    assert metrics["subgroup_i2t_r1"] != metrics["subgroup_i2t_r3"]  # the data is not degenerate


def test_within_group_is_harder_than_global_and_exact_when_aligned():
    # Texts equal to their images: every query finds its own item first, globally and within the group.
    gen = torch.Generator().manual_seed(1)
    emb = torch.nn.functional.normalize(torch.randn(30, 16, generator=gen), dim=-1)
    captions = [f"c{i}" for i in range(30)]
    labels = [f"g{i % 4}" for i in range(30)]
    metrics = within_group_recall(emb, emb, captions, labels, "group")
    assert metrics["group_i2t_r1"] == metrics["group_t2i_r1"] == 1.0
    assert retrieval_recall(emb, emb, captions)["image_to_text_R@1"] == 1.0
    assert abs(metrics["group_chance_r1"] - sum(1 / 8 if i % 4 < 2 else 1 / 7 for i in range(30)) / 30) < 1e-6
