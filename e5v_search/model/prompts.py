"""E5-V's prompts, byte for byte as the model card and the paper's code write them.

Any change here changes every embedding, so it must bump PROMPT_VERSION: the catalog records the
version an index was built with and refuses queries embedded with another one.
"""

PROMPT_VERSION = "e5v-1"

LLAMA3_TEMPLATE = (
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n \n"
)
IMAGE_TOKEN = "<image>"
SENT = "<sent>"

IMAGE_PROMPT = LLAMA3_TEMPLATE.format("<image>\nSummary above image in one word: ")
TEXT_PROMPT = LLAMA3_TEMPLATE.format("<sent>\nSummary above sentence in one word: ")
# The paper's composed-retrieval (CIRR) prompt; "desribe" is E5-V's own spelling and stays.
COMPOSED_PROMPT = LLAMA3_TEMPLATE.format(
    '<image>Modify this image with "<sent>", desribe modified image in one word:'
)

# The gallery prompt of E5-V's CIRR evaluation (retrieval.py: "[INST] <image>\n Describe this image
# in one word: [/INST]" with the [INST] markers stripped for Llama-3). Only `eval composed` uses it,
# for a gallery index of its own, so that its numbers compare with the paper's.
CIRR_GALLERY_PROMPT = LLAMA3_TEMPLATE.format("<image>\n Describe this image in one word:")
CIRR_GALLERY_VERSION = f"{PROMPT_VERSION}/cirr-gallery"


def _escape(text: str) -> str:
    # A literal "<image>" inside a user's text would be read as an image placeholder and make the
    # processor expect one more image than it was given.
    return text.replace(IMAGE_TOKEN, "< image>")


def text_prompt(text: str) -> str:
    return TEXT_PROMPT.replace(SENT, _escape(text))


def composed_prompt(text: str) -> str:
    return COMPOSED_PROMPT.replace(SENT, _escape(text))
