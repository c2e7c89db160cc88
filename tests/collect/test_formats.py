"""Datasets as other tools write them (issue 25): OpenAI messages with content parts and tool
calls, ShareGPT, Alpaca (JSONL or one JSON array), Hugging Face save_to_disk folders and parquet.
Every format has a bad row that must come back as a reject naming its file and line (or row)."""

from __future__ import annotations

import json

import pytest

from ftctl.errors import ConfigError
from tests.collect.conftest import configure, write_jsonl
from tests.collect.test_sources import read_all
from tests.conftest import run_json

CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
TOOL_ROW = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                         {"role": "assistant", "content": None, "tool_calls": [CALL]},
                         {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
                         {"role": "assistant", "content": "18C and sunny."}], "tools": TOOLS}

# a ChatML template that writes tool calls (the shape of Qwen2.5's, cut down)
TOOL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{\"name\": \"{{ c.function.name }}\", "
    "\"arguments\": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def where(rejects):
    return {r.where: r.reason for r in rejects}


def test_sharegpt(tmp_path):
    write_jsonl(tmp_path / "sg.jsonl", [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}],
         "system": "Be brief.", "rating": 5},  # 1
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "wizard", "value": "Boo"}]},  # 2: bad role
        {"conversations": [{"from": "human", "value": "Weather in Paris?"},
                           {"from": "function_call", "value": json.dumps({"name": "get_weather",
                                                                          "arguments": {"city": "Paris"}})},
                           {"from": "observation", "value": "18C"}, {"from": "gpt", "value": "18C."}],
         "tools": json.dumps([TOOLS[0]["function"]])},  # 3: LLaMA-Factory's function calling
        {"conversations": "nope"},  # 4
    ])
    examples, rejects, _ = read_all("jsonl", {"path": "sg.jsonl", "format": "sharegpt"}, tmp_path)
    assert where(rejects) == {"sg.jsonl:2": "unknown_role", "sg.jsonl:4": "wrong_type:conversations"}
    assert rejects[0].detail.startswith("conversations[1].from: str of 6 chars, not one of")  # never the value
    assert [e.source_id for e in examples] == ["sg.jsonl:1", "sg.jsonl:3"]
    first, tool = examples
    assert first.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                              {"role": "assistant", "content": "Hello!"}] and first.rating == 5
    assert tool.messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert tool.messages[2] == {"role": "tool", "content": "18C"} and tool.tools == TOOLS


def test_alpaca_json_array(tmp_path):
    rows = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hi.", "output": ""},  # no answer to learn
            {"instruction": "Continue.", "input": "", "output": "Done.", "system": "Terse.",
             "history": [["First?", "One."]]}]
    text = "[\n" + ",\n".join(json.dumps(r, indent=2) for r in rows) + "\n]\n"
    (tmp_path / "alpaca.json").write_text(text)
    line_of = [text.count("\n", 0, text.index(json.dumps(r, indent=2))) + 1 for r in rows]
    examples, rejects, _ = read_all("jsonl", {"path": "alpaca.json"}, tmp_path)  # auto
    assert where(rejects) == {f"alpaca.json:{line_of[1]}": "missing_field:output"}
    assert [e.source_id for e in examples] == [f"alpaca.json:{line_of[0]}", f"alpaca.json:{line_of[2]}"]
    assert examples[0].messages == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                                    {"role": "assistant", "content": "5"}]
    assert [m["role"] for m in examples[1].messages] == ["system", "user", "assistant", "user", "assistant"]
    # a JSON array cut short: one reject naming the line where it breaks, never a silent stop
    (tmp_path / "alpaca.json").write_text(text[: text.rindex("Done")])
    _, rejects, _ = read_all("jsonl", {"path": "alpaca.json"}, tmp_path)
    assert where(rejects) == {f"alpaca.json:{line_of[1]}": "missing_field:output",
                              f"alpaca.json:{line_of[2]}": "invalid_json"}


def test_openai_parts_and_tool_calls(tmp_path):
    write_jsonl(tmp_path / "oa.jsonl", [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Part one."},
                                                   {"type": "text", "text": "Part two."}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "Both read."}]}]},  # 1
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
                      {"role": "assistant", "content": "A cat."}]},  # 2: an image cannot be trained on
        TOOL_ROW,  # 3
        {"messages": [{"role": "user", "content": "x"},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},  # 4
    ])
    examples, rejects, _ = read_all("jsonl", {"path": "oa.jsonl", "format": "openai"}, tmp_path)
    assert where(rejects) == {"oa.jsonl:2": "unsupported_content:image_url", "oa.jsonl:4": "bad_tool_call"}
    assert examples[0].messages == [{"role": "user", "content": "Part one.\nPart two."},
                                    {"role": "assistant", "content": "Both read."}]
    tool = examples[1]
    assert tool.messages[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert tool.messages[2] == {"role": "tool", "content": "18C, sunny", "tool_call_id": "call_1"}
    # a format that does not fit the row is a reject, not a guess
    _, rejects, _ = read_all("jsonl", {"path": "oa.jsonl", "format": "alpaca"}, tmp_path)
    assert set(where(rejects).values()) == {"missing_field:instruction"}


def test_format_is_validated(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"prompt": "q", "response": "a"}])
    with pytest.raises(ConfigError, match="sources\\[0\\].format"):
        read_all("jsonl", {"path": "x.jsonl", "format": "vicuna"}, tmp_path)


def test_hf_dataset_save_to_disk_and_parquet(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"conversations": [{"from": "human", "value": f"Q{i}"}, {"from": "gpt", "value": f"A{i}"}]}
            for i in range(5)]
    rows[3] = {"conversations": [{"from": "human", "value": "Q3"}, {"from": "narrator", "value": "A3"}]}
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    examples, rejects, _ = read_all("hf_dataset", {"path": "saved"}, tmp_path)
    assert where(rejects) == {"saved:row 4": "unknown_role"}
    assert [e.prompt for e in examples] == ["Q0", "Q1", "Q2", "Q4"] and examples[0].response == "A0"

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:2]),
                               "test": datasets.Dataset.from_list(rows[2:3])})
    dd.save_to_disk(str(tmp_path / "dict"))
    examples, _, _ = read_all("hf_dataset", {"path": "dict", "split": "test"}, tmp_path)
    assert [e.source_id for e in examples] == ["dict[test]:row 1"]
    with pytest.raises(ConfigError, match="has no split 'validation'"):
        read_all("hf_dataset", {"path": "dict", "split": "validation"}, tmp_path)

    alpaca = [{"instruction": "Add.", "input": "1 and 1", "output": "2"}, {"instruction": "Hi.", "input": "",
                                                                           "output": None}]
    datasets.Dataset.from_list(alpaca).to_parquet(str(tmp_path / "data" / "train.parquet"))
    examples, rejects, _ = read_all("hf_dataset", {"path": "data/*.parquet"}, tmp_path)
    assert where(rejects) == {"data/train.parquet:row 2": "missing_field:output"}
    assert examples[0].prompt == "Add.\n\n1 and 1" and examples[0].source_id == "data/train.parquet:row 1"

    oa = [TOOL_ROW, {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}]
    datasets.Dataset.from_list(oa).to_parquet(str(tmp_path / "oa.parquet"))
    examples, rejects, _ = read_all("hf_dataset", {"path": "oa.parquet"}, tmp_path)
    assert not rejects and examples[1].messages == [{"role": "user", "content": "Hi"},
                                                    {"role": "assistant", "content": "Yo"}]
    assert examples[0].messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


def test_parquet_without_a_text_column_names_file_row_and_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"id": 1, "score": 0.5}]).to_parquet(str(tmp_path / "scores.parquet"))
    with pytest.raises(ConfigError) as e:
        read_all("hf_dataset", {"path": "scores.parquet"}, tmp_path)
    assert "scores.parquet: no text column ftctl can read (row 1 has columns: id, score)" in e.value.message
    assert "messages" in e.value.hint and "rename_column" in e.value.hint
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ConfigError, match="broken.parquet: not a readable parquet file"):
        read_all("hf_dataset", {"path": "broken.parquet"}, tmp_path)


def test_tool_calls_kept_only_where_the_template_renders_them(workspace, tiny_base):
    """SmolLM2's template ignores tool_calls: such rows are rejected with the reason. A template that
    writes them keeps them, and training learns the call (its tokens are labelled)."""
    from transformers import AutoTokenizer

    from ftctl.lib.chat_format import IGNORE, encode
    from ftctl.records import read_jsonl

    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    write_jsonl(workspace.root / "feedback" / "tools.jsonl", [TOOL_ROW, plain, TOOL_ROW | {"id": 2}])
    configure(workspace, [{"name": "tools", "kind": "jsonl", "path": "feedback/tools.jsonl"}],
              {"split": {"val": 0, "test": 0}, "dedup": "off"})
    cfg = workspace.config_path
    cfg.write_text(cfg.read_text().replace("base: smollm2-135m-instruct", f"base: {tiny_base}"))
    out = run_json("collect", cwd=workspace.root)
    assert out["rejected"] == {"tool_calls_unsupported": 2}, out
    lines = [json.loads(x) for x in (workspace.data_dir("assistant") / "rejects.jsonl").read_text().splitlines()]
    assert [x["where"] for x in lines] == ["feedback/tools.jsonl:1", "feedback/tools.jsonl:3"]
    assert "does not render tool calls" in lines[0]["detail"]

    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    data = yaml.load(cfg.read_text())
    data["train"] = {"trainer": "lora", "lora": {"chat_template": TOOL_TEMPLATE}}
    with open(cfg, "w") as f:
        yaml.dump(data, f)
    out = run_json("collect", "--since", "all", cwd=workspace.root)
    assert out["rejected"] == {} and out["kept"] == 3, out
    kept = [e for e in read_jsonl(workspace.data_dir("assistant") / "train.jsonl") if e.tools]
    assert kept and kept[0].messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"

    tok = AutoTokenizer.from_pretrained(tiny_base)
    tok.chat_template = TOOL_TEMPLATE
    enc = encode(tok, kept[0].messages, kept[0].tools)
    learned = tok.decode([t for t in enc.labels if t != IGNORE])
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in learned
    assert "18C and sunny." in learned and "Weather in Paris?" not in learned


def test_tool_call_arguments_are_scrubbed(tmp_path):
    """What a user typed reaches a call's arguments (an e-mail to look up): scrubbed like content."""
    from collections import Counter

    from ftctl.data.curate import scrub_row
    from ftctl.lib.scrub import Scrubber
    from ftctl.records import Example

    ex = Example(messages=[
        {"role": "user", "content": "Find jane.doe@example.com"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "find_user", "arguments": {"email": "jane.doe@example.com", "limit": 3}}}]}])
    found = Counter()
    scrubber = Scrubber(types=["EMAIL"], cache_dir=tmp_path)
    out, _ = scrub_row(ex, None, lambda t: scrubber.scrub(t, found))
    call = out.messages[1]["tool_calls"][0]
    assert "jane.doe" not in json.dumps(out.messages) and found["EMAIL"] == 2
    assert call["id"] == "c1" and call["function"]["name"] == "find_user" and call["function"]["arguments"]["limit"] == 3


def test_tool_calls_with_a_missing_base_are_rejected_with_the_reason(workspace, tmp_path):
    """`base:` naming a file that is not there: the rows with tool calls are rejected saying the
    template could not be checked (collect used to crash with FileNotFoundError); the rest kept."""
    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    write_jsonl(workspace.root / "feedback" / "tools.jsonl", [TOOL_ROW, plain])
    configure(workspace, [{"name": "tools", "kind": "jsonl", "path": "feedback/tools.jsonl"}],
              {"split": {"val": 0, "test": 0}, "dedup": "off"})
    cfg = workspace.config_path
    cfg.write_text(cfg.read_text().replace("base: smollm2-135m-instruct", f"base: {tmp_path / 'gone.gguf'}"))
    out = run_json("collect", cwd=workspace.root)
    assert out["rejected"] == {"tool_calls_unsupported": 1} and out["kept"] == 1, out
    line = json.loads((workspace.data_dir("assistant") / "rejects.jsonl").read_text().splitlines()[0])
    assert "is not on disk to check" in line["detail"]
