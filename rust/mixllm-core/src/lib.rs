//! mixllm's decision core.
