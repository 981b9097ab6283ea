"""The options that narrow the terms asked of a provider, shared by ``qdspace negotiate``
(gRPC peers) and ``qdspace dsp negotiate`` (DSP providers): one spelling, one help text."""

from __future__ import annotations

from typing import Annotated

import typer

OrderOpt = Annotated[list[str] | None, typer.Option(help="only this order, repeatable")]
FieldOpt = Annotated[list[str] | None, typer.Option(help="only this field, repeatable")]
RetentionOpt = Annotated[int | None, typer.Option(help="ask for shorter retention (days)")]
ValidUntilOpt = Annotated[str | None, typer.Option(help="ISO 8601 instant the agreement ends")]
