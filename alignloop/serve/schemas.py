"""Request bodies: the OpenAI protocol (unknown fields are ignored, as OpenAI does), predict, feedback and jobs."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Union[str, list[dict[str, Any]], None] = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class SamplingRequest(_Lenient):
    """The fields chat and completion requests share: model, limits and sampling settings."""

    model: str = ""
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    user: Optional[str] = Field(None, max_length=200)


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


class CompletionRequest(SamplingRequest):
    prompt: Union[str, list[str]]
    max_tokens: Optional[int] = Field(16, ge=1)  # the OpenAI default for /completions


class PredictRequest(_Lenient):
    model: str = ""
    question: str = Field(..., min_length=1)
    context: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1, description="default: the server's --default-max-tokens")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    user: Optional[str] = Field(None, max_length=200)


class FeedbackRequest(_Lenient):
    response_id: Optional[str] = None
    choice_index: int = Field(0, ge=0)
    thumbs: Optional[Literal["up", "down"]] = None
    comment: Optional[str] = Field(None, max_length=20_000)
    correction: Optional[str] = Field(None, max_length=20_000)
    compare: Optional[list[str]] = Field(None, min_length=2, max_length=2,
                                         description="two response ids (or id#choice_index) shown side by side")
    choice: Optional[Literal["A", "B", "tie", "both_bad"]] = None
    user: Optional[str] = Field(None, max_length=200)
    idempotency_key: Optional[str] = Field(None, max_length=100)


class JobRequest(_Lenient):
    stage: str = Field(..., description="sft, dpo, reward, ppo, grpo or rloo")
    config: dict[str, Any] = Field(default_factory=dict)
    model_name: Optional[str] = Field(None, max_length=200)
    data: Optional[list[dict[str, Any]]] = Field(None, description="training records, written to the job folder")
    data_field: Optional[str] = None
