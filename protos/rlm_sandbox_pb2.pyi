from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEXT: _ClassVar[Encoding]
    JSON: _ClassVar[Encoding]
TEXT: Encoding
JSON: Encoding

class HostMessage(_message.Message):
    __slots__ = ("context", "execute", "set_variables", "interrupt", "shutdown")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_FIELD_NUMBER: _ClassVar[int]
    SET_VARIABLES_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    context: ContextChunk
    execute: ExecuteRequest
    set_variables: SetVariables
    interrupt: Interrupt
    shutdown: Shutdown
    def __init__(self, context: _Optional[_Union[ContextChunk, _Mapping]] = ..., execute: _Optional[_Union[ExecuteRequest, _Mapping]] = ..., set_variables: _Optional[_Union[SetVariables, _Mapping]] = ..., interrupt: _Optional[_Union[Interrupt, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ...) -> None: ...

class ContextChunk(_message.Message):
    __slots__ = ("name", "data", "last", "encoding", "total_bytes", "aliases", "path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    last: bool
    encoding: Encoding
    total_bytes: int
    aliases: _containers.RepeatedScalarFieldContainer[str]
    path: str
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., total_bytes: _Optional[int] = ..., aliases: _Optional[_Iterable[str]] = ..., path: _Optional[str] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("cell_id", "code", "max_output_chars", "timeout_seconds")
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_CHARS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    cell_id: int
    code: str
    max_output_chars: int
    timeout_seconds: float
    def __init__(self, cell_id: _Optional[int] = ..., code: _Optional[str] = ..., max_output_chars: _Optional[int] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class SetVariables(_message.Message):
    __slots__ = ("values_json", "tools", "values_pickle")
    VALUES_JSON_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    VALUES_PICKLE_FIELD_NUMBER: _ClassVar[int]
    values_json: bytes
    tools: _containers.RepeatedCompositeFieldContainer[ToolSpec]
    values_pickle: bytes
    def __init__(self, values_json: _Optional[bytes] = ..., tools: _Optional[_Iterable[_Union[ToolSpec, _Mapping]]] = ..., values_pickle: _Optional[bytes] = ...) -> None: ...

class ToolSpec(_message.Message):
    __slots__ = ("name", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class Interrupt(_message.Message):
    __slots__ = ("cell_id",)
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    cell_id: int
    def __init__(self, cell_id: _Optional[int] = ...) -> None: ...

class Shutdown(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunnerMessage(_message.Message):
    __slots__ = ("hello", "ack", "result", "part")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ack: Ack
    result: ExecuteResult
    part: MessagePart
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., result: _Optional[_Union[ExecuteResult, _Mapping]] = ..., part: _Optional[_Union[MessagePart, _Mapping]] = ...) -> None: ...

class MessagePart(_message.Message):
    __slots__ = ("total_bytes", "data")
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    total_bytes: int
    data: bytes
    def __init__(self, total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("runner_version", "pid", "python_version")
    RUNNER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    runner_version: str
    pid: int
    python_version: str
    def __init__(self, runner_version: _Optional[str] = ..., pid: _Optional[int] = ..., python_version: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("what", "error")
    WHAT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    what: str
    error: str
    def __init__(self, what: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ExecuteResult(_message.Message):
    __slots__ = ("cell_id", "stdout", "stderr", "stdout_dropped_chars", "stderr_dropped_chars", "error", "interrupted", "seconds", "answer_ready", "answer_content", "variables", "fatal")
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    STDOUT_DROPPED_CHARS_FIELD_NUMBER: _ClassVar[int]
    STDERR_DROPPED_CHARS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_READY_FIELD_NUMBER: _ClassVar[int]
    ANSWER_CONTENT_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    FATAL_FIELD_NUMBER: _ClassVar[int]
    cell_id: int
    stdout: str
    stderr: str
    stdout_dropped_chars: int
    stderr_dropped_chars: int
    error: str
    interrupted: bool
    seconds: float
    answer_ready: bool
    answer_content: str
    variables: _containers.RepeatedScalarFieldContainer[str]
    fatal: bool
    def __init__(self, cell_id: _Optional[int] = ..., stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., stdout_dropped_chars: _Optional[int] = ..., stderr_dropped_chars: _Optional[int] = ..., error: _Optional[str] = ..., interrupted: _Optional[bool] = ..., seconds: _Optional[float] = ..., answer_ready: _Optional[bool] = ..., answer_content: _Optional[str] = ..., variables: _Optional[_Iterable[str]] = ..., fatal: _Optional[bool] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("prompt", "model", "messages_json", "cell_id")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_JSON_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    model: str
    messages_json: str
    cell_id: int
    def __init__(self, prompt: _Optional[str] = ..., model: _Optional[str] = ..., messages_json: _Optional[str] = ..., cell_id: _Optional[int] = ...) -> None: ...

class CompleteReply(_message.Message):
    __slots__ = ("text", "model", "input_tokens", "output_tokens", "cost")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    text: str
    model: str
    input_tokens: int
    output_tokens: int
    cost: float
    def __init__(self, text: _Optional[str] = ..., model: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cost: _Optional[float] = ...) -> None: ...

class BatchCall(_message.Message):
    __slots__ = ("complete", "subcall", "tool", "parts_total_bytes", "part")
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    SUBCALL_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    PARTS_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    complete: CompleteRequest
    subcall: SubcallRequest
    tool: ToolRequest
    parts_total_bytes: int
    part: bytes
    def __init__(self, complete: _Optional[_Union[CompleteRequest, _Mapping]] = ..., subcall: _Optional[_Union[SubcallRequest, _Mapping]] = ..., tool: _Optional[_Union[ToolRequest, _Mapping]] = ..., parts_total_bytes: _Optional[int] = ..., part: _Optional[bytes] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("index", "reply", "code", "details", "tool_reply")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    TOOL_REPLY_FIELD_NUMBER: _ClassVar[int]
    index: int
    reply: CompleteReply
    code: int
    details: str
    tool_reply: ToolReply
    def __init__(self, index: _Optional[int] = ..., reply: _Optional[_Union[CompleteReply, _Mapping]] = ..., code: _Optional[int] = ..., details: _Optional[str] = ..., tool_reply: _Optional[_Union[ToolReply, _Mapping]] = ...) -> None: ...

class SubcallRequest(_message.Message):
    __slots__ = ("prompt", "model", "cell_id")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    model: str
    cell_id: int
    def __init__(self, prompt: _Optional[str] = ..., model: _Optional[str] = ..., cell_id: _Optional[int] = ...) -> None: ...

class ToolRequest(_message.Message):
    __slots__ = ("name", "args_json", "cell_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    args_json: bytes
    cell_id: int
    def __init__(self, name: _Optional[str] = ..., args_json: _Optional[bytes] = ..., cell_id: _Optional[int] = ...) -> None: ...

class ToolReply(_message.Message):
    __slots__ = ("result_json", "result_pickle")
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    RESULT_PICKLE_FIELD_NUMBER: _ClassVar[int]
    result_json: bytes
    result_pickle: bytes
    def __init__(self, result_json: _Optional[bytes] = ..., result_pickle: _Optional[bytes] = ...) -> None: ...
