"""Install sft_jax: `pip install -e .` (CPU); extras [test], [gpu], [tpu]."""

import setuptools

BEAM = ["apache-beam[tfrecord]>=2.77", "sentencepiece>=0.2.0,<0.2.3"]

setuptools.setup(
    name="sft_jax",
    version="0.1.0",
    description="JAX-native instruction tuning: seqio mixtures, sharded T5/LLaMA training, held-out evaluation.",
    packages=setuptools.find_packages(include=["sft_jax", "sft_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "seqio>=0.0.20",
        "tensorflow>=2.21.0",
        "tensorflow-datasets>=4.9.10",
        "gin-config>=0.5.0",
        "numpy>=2.0",
        "rouge-score>=0.1.2",
        "tensorboardX>=2.6.5",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "jinja2>=3.1.6",
        "pyyaml>=6.0",
        "tokenizers>=0.23",
        "sentencepiece>=0.2.0",
        "safetensors>=0.4",  # Hugging Face checkpoints in and out, without torch
        "ml_dtypes>=0.5",  # bfloat16 safetensors as numpy arrays
    ],
    package_data={"sft_jax.data.collections": ["*.spm.model", "t0_templates/**/templates.yaml"]},
    extras_require={
        # tools/cache_tasks.py. Beam needs protobuf < 7; sentencepiece 0.2.3's generated code needs >= 7.
        # (0.2.1 to 0.2.3 train byte-identical models: tests/data/test_synthetic_vocab.py checks it.)
        "beam": BEAM,
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "transformers>=5.0", "torch==2.13.0", "lm_eval>=0.4.13,<0.5",
                 *BEAM],
        "lm_eval": ["lm_eval>=0.4.13,<0.5"],  # tools/run_lm_eval.py, sft_jax.evaluation.lm_eval_adapter
        "gpu": ["jax[cuda12]>=0.10.2"],
        "tpu": ["jax[tpu]>=0.10.2"],
    },
)
