"""`csdemu generate` with one prompt streams its text as the tokens come
(transformers' TextStreamer) and prints it once: the same text the library's
generate() returns for that prompt on the same drive."""
import os
import subprocess
import sys
import time

import csdemu

PROMPT = "Name a planet."
TOKENS = 24


def _run_cli(socket_path):
    """-> (stdout, seconds from the first streamed byte after the arrow to the summary)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}     # the same arithmetic in both processes
    p = subprocess.Popen([sys.executable, "-m", "csdemu", "generate", "--socket", socket_path,
                          "--prompt", PROMPT, "--max-new-tokens", str(TOKENS)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, first_word, summary = b"", None, None
    while True:
        chunk = os.read(p.stdout.fileno(), 4096)
        if not chunk:
            break
        out += chunk
        now = time.monotonic()
        arrow = "→ ".encode()
        if first_word is None and arrow in out and out.split(arrow, 1)[1].strip():
            first_word = now
        if summary is None and b"tokens in" in out:
            summary = now
    assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    return out.decode(), summary - first_word


def test_one_prompt_streams_the_text_the_library_generates(daemon):
    import torch

    from csdemu.hf import load_smollm2
    from csdemu.hf.generate import generate
    stdout, lead = _run_cli(daemon.socket_path)
    model, tok = load_smollm2()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with csdemu.connect(daemon.socket_path) as dev:
            text = generate(dev, model, tok, [PROMPT], TOKENS)["texts"][0].strip()
    finally:
        model.set_attn_implementation("sdpa")
        torch.set_num_threads(threads)
    assert text
    lines = stdout.splitlines()
    assert lines[0] == f"[0] {PROMPT}"
    assert lines[1].strip() == f"→ {text}", (lines[1], text)
    assert stdout.count(text) == 1
    # Streamed: the first words were out while the rest were still being
    # decoded, not printed with the summary at the end.
    assert lead > 0.2, lead
