"""Which conversations eval-llava answers: up to N per task, a seeded choice within each task, so every task is
scored on the same number of conversations and a file's order (or its first task) cannot skew the set."""
from collections import defaultdict

from mmtool.data.reading.sample_stream import seeded_rng
from stage3_llm.conversations import Conversation

NO_TASK = "-"


def task_of(conversation: Conversation) -> str:
    return conversation.extra.get("task", NO_TASK)


def sample_per_task(conversations: list[Conversation], per_task: int | None, seed: int) -> list[Conversation]:
    """Up to `per_task` conversations of each task (all when None or when a task has fewer), in file order. Each
    task's choice depends only on the seed, the task and its own conversations."""
    by_task = defaultdict(list)  # task -> indices into conversations
    for index, conversation in enumerate(conversations):
        by_task[task_of(conversation)].append(index)
    chosen = []
    for task, indices in by_task.items():
        if per_task is None or len(indices) <= per_task:
            chosen += indices
        else:
            picks = seeded_rng(seed, "per-task", task).choice(len(indices), per_task, replace=False)
            chosen += [indices[i] for i in picks]
    return [conversations[i] for i in sorted(chosen)]
