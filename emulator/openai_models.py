"""The data plane's wire as the emulator reads and answers it (spec §5.4, OpenAI's field names
and rules): chat completions, the Responses API and embeddings, requests, answers and the
error body.

Written from the spec and OpenAI's API, apart from the client's models, so that each checks
the other. Requests keep unknown fields (OpenAI has many options the synthetic model ignores)
but check the ones it reads, with JSON types taken strictly (no "3" for an integer, no 1 for
a boolean). Answers forbid unknown fields: the emulator sends what they declare.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from emulator.embeddings import MAX_EMBEDDING_INPUTS

# Union members are told apart by JSON type; their tags appear in error locations, marked by
# angle brackets so the error's `param` can leave them out.
STRING_TAG = "<string>"
PARTS_TAG = "<parts>"
STRINGS_TAG = "<strings>"
INTEGERS_TAG = "<integers>"
NESTED_TAG = "<nested>"
MISSING_CONTENT = "missing_content"
TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})
# OpenAI lets content be null (or absent) only where a message may carry calls instead.
NULLABLE_CONTENT_ROLES = frozenset({"assistant", "function"})

ChatRole = Literal["system", "developer", "user", "assistant", "tool", "function"]
InputRole = Literal["system", "developer", "user", "assistant"]
FinishReason = Literal["stop", "length"]
ResponseStatus = Literal["in_progress", "completed", "incomplete"]
PositiveInt = Annotated[StrictInt, Field(ge=1)]
Count = Annotated[StrictInt, Field(ge=0)]
EncodingFormat = Literal["float", "base64"]
Temperature = Annotated[StrictFloat, Field(ge=0, le=2)]
TopP = Annotated[StrictFloat, Field(ge=0, le=1)]


def _json_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return STRING_TAG
    return PARTS_TAG if isinstance(value, list) else None


# -- requests ------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Request):
    """One part of a multi-part content; text parts must carry their text."""

    type: StrictStr
    text: StrictStr | None = None

    @model_validator(mode="after")
    def _text_parts_have_text(self) -> Self:
        if self.type in TEXT_PART_TYPES and self.text is None:
            raise ValueError(f"a '{self.type}' part needs a string 'text'")
        return self


Content = Annotated[
    Annotated[StrictStr, Tag(STRING_TAG)]
    | Annotated[list[ContentPart], Field(min_length=1), Tag(PARTS_TAG)],
    Discriminator(
        _json_kind,
        custom_error_type="invalid_type",
        custom_error_message="expected a string or an array of content parts",
    ),
]


class ChatMessage(_Request):
    role: ChatRole
    content: Content | None = Field(default=None, validate_default=True)

    @field_validator("content", mode="after")
    @classmethod
    def _content_required(cls, value: Any, info: ValidationInfo) -> Any:
        role = info.data.get("role")
        if value is None and role is not None and role not in NULLABLE_CONTENT_ROLES:
            raise PydanticCustomError(
                MISSING_CONTENT, "a {role} message needs content", {"role": role}
            )
        return value


class StreamOptions(_Request):
    include_usage: StrictBool | None = None


class ChatCompletionRequest(_Request):
    model: StrictStr | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    max_tokens: PositiveInt | None = None  # the older name; max_completion_tokens wins
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    # One choice per answer: the emulator serves no more.
    n: Annotated[StrictInt, Field(ge=1, le=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None

    @field_validator("stream_options", mode="after")
    @classmethod
    def _stream_options_need_stream(cls, value: Any, info: ValidationInfo) -> Any:
        # As OpenAI answers; the AgentRun SDK's forced include_usage on non-streams (spec
        # Q10) would be refused here.
        if value is not None and not info.data.get("stream"):
            raise PydanticCustomError(
                "stream_options_without_stream",
                "'stream_options' is only allowed when 'stream' is true",
            )
        return value

    @property
    def output_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class InputItem(_Request):
    """A Responses `input` item: a message (`role` and `content`) or another typed item."""

    type: StrictStr | None = None
    role: InputRole | None = None
    content: Content | None = None

    @model_validator(mode="after")
    def _typed_or_message(self) -> Self:
        if self.type is None and self.role is None:
            raise ValueError("an input item needs a string 'type' or a 'role'")
        return self


Input = Annotated[
    Annotated[StrictStr, Field(min_length=1), Tag(STRING_TAG)]
    | Annotated[list[InputItem], Field(min_length=1), Tag(PARTS_TAG)],
    Discriminator(
        _json_kind,
        custom_error_type="invalid_type",
        custom_error_message="expected a string or an array of input items",
    ),
]


class ResponsesRequest(_Request):
    model: StrictStr | None = None
    input: Input
    instructions: StrictStr | None = None
    max_output_tokens: PositiveInt | None = None
    stream: StrictBool | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None


def _embedding_input_kind(value: Any) -> str | None:
    """A string, or an array told apart by its first item: strings, token arrays, or (also
    for an empty array or a non-integer first item) one token array."""
    if isinstance(value, str):
        return STRING_TAG
    if not isinstance(value, list):
        return None
    first = value[0] if value else None
    if isinstance(first, str):
        return STRINGS_TAG
    return NESTED_TAG if isinstance(first, list) else INTEGERS_TAG


NonEmptyText = Annotated[StrictStr, Field(min_length=1)]
TokenArray = Annotated[list[Count], Field(min_length=1)]
EmbeddingInput = Annotated[
    Annotated[NonEmptyText, Tag(STRING_TAG)]
    | Annotated[
        list[NonEmptyText], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS), Tag(STRINGS_TAG)
    ]
    | Annotated[TokenArray, Tag(INTEGERS_TAG)]
    | Annotated[
        list[TokenArray], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS),
        Tag(NESTED_TAG),
    ],
    Discriminator(
        _embedding_input_kind,
        custom_error_type="invalid_type",
        custom_error_message="expected a string, an array of strings, or token arrays",
    ),
]


class EmbeddingRequest(_Request):
    model: StrictStr | None = None
    input: EmbeddingInput
    dimensions: PositiveInt | None = None
    encoding_format: EncodingFormat | None = None
    user: StrictStr | None = None

    @property
    def items(self) -> list[str] | list[list[int]]:
        """The inputs, one per embedding."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if isinstance(value[0], int):  # one token array (validated: never empty)
            return [value]
        return value


# -- answers -------------------------------------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompletionUsage(_Answer):
    prompt_tokens: Count
    completion_tokens: Count
    total_tokens: Count

    @model_validator(mode="after")
    def _total_is_the_sum(self) -> Self:
        if self.total_tokens != self.prompt_tokens + self.completion_tokens:
            raise ValueError("total_tokens must be prompt_tokens + completion_tokens")
        return self


class AssistantMessage(_Answer):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None


class ChatChoice(_Answer):
    index: Count
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(_Answer):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    system_fingerprint: None = None


def _is_none(value: Any) -> bool:
    return value is None


class ChunkDelta(_Answer):
    """Only the keys that carry something: the role once, then content."""

    role: Literal["assistant"] | None = Field(default=None, exclude_if=_is_none)
    content: str | None = Field(default=None, exclude_if=_is_none)


class ChunkChoice(_Answer):
    index: Count
    delta: ChunkDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Answer):
    """With `include_usage`, every chunk has `usage` (null until the last, which has no
    choices); without it, no chunk has the key (dump with `exclude={"usage"}`)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: None = None
    usage: CompletionUsage | None = None
    choices: list[ChunkChoice]


class OutputText(_Answer):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)


class OutputMessage(_Answer):
    id: str
    type: Literal["message"] = "message"
    status: ResponseStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class InputTokensDetails(_Answer):
    cached_tokens: Count = 0


class OutputTokensDetails(_Answer):
    reasoning_tokens: Count = 0


class ResponseUsage(_Answer):
    input_tokens: Count
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: Count
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: Count

    @model_validator(mode="after")
    def _total_is_the_sum(self) -> Self:
        if self.total_tokens != self.input_tokens + self.output_tokens:
            raise ValueError("total_tokens must be input_tokens + output_tokens")
        return self


class IncompleteDetails(_Answer):
    reason: Literal["max_output_tokens"]


class ResponseObject(_Answer):
    """A response: output and usage once finished; `incomplete` when cut by
    max_output_tokens."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    error: None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputMessage]
    parallel_tool_calls: bool = True
    tool_choice: Literal["auto"] = "auto"
    tools: list[Any] = Field(default_factory=list)
    usage: ResponseUsage | None

    @model_validator(mode="after")
    def _finished_means_usage(self) -> Self:
        if (self.status == "in_progress") != (self.usage is None):
            raise ValueError("usage is given exactly when the response is finished")
        if (self.status == "incomplete") != (self.incomplete_details is not None):
            raise ValueError("incomplete_details is given exactly when incomplete")
        return self


class _StreamEvent(_Answer):
    type: str
    sequence_number: Count


class ResponseLifecycleEvent(_StreamEvent):
    type: Literal[
        "response.created", "response.in_progress", "response.completed", "response.incomplete"
    ]
    response: ResponseObject


class OutputItemEvent(_StreamEvent):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: Count
    item: OutputMessage


class ContentPartEvent(_StreamEvent):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: Count
    content_index: Count
    part: OutputText


class OutputTextDeltaEvent(_StreamEvent):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    item_id: str
    output_index: Count
    content_index: Count
    delta: str
    logprobs: list[Any] = Field(default_factory=list)


class OutputTextDoneEvent(_StreamEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    item_id: str
    output_index: Count
    content_index: Count
    text: str
    logprobs: list[Any] = Field(default_factory=list)


class EmbeddingUsage(_Answer):
    prompt_tokens: Count
    total_tokens: Count

    @model_validator(mode="after")
    def _total_is_the_prompt(self) -> Self:
        if self.total_tokens != self.prompt_tokens:
            raise ValueError("total_tokens must be prompt_tokens")
        return self


class EmbeddingObject(_Answer):
    object: Literal["embedding"] = "embedding"
    index: Count
    embedding: list[float] | str  # a str: base64 of the little-endian float32 values


class EmbeddingList(_Answer):
    """The embeddings answer, one per input in input order."""

    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: EmbeddingUsage


# -- errors --------------------------------------------------------------------------------


class ErrorDetail(_Answer):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(_Answer):
    """Every data-plane error the emulator answers itself (auth errors are the control
    plane's `ErrorBody`, from the shared dependency)."""

    error: ErrorDetail
