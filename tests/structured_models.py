"""The structured-output schema set: Pydantic models as clients send them, with a prompt each.

Pydantic's `model_json_schema()` has no `additionalProperties`, so under Ollama's semantics every
object is closed; `closed()` makes that explicit for validation (jsonschema alone would allow
extra keys). Shared by tests/test_structured_demo.py and scripts/structured_validity.py.
"""

from __future__ import annotations

import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field


class Person(BaseModel):
    name: str
    age: int
    email: str | None = None


class Address(BaseModel):
    street: str
    city: str
    zip_code: str


class Customer(BaseModel):
    name: str
    address: Address
    vip: bool


class Item(BaseModel):
    name: str
    quantity: int
    price: float


class Order(BaseModel):
    order_id: int
    items: list[Item]
    notes: str | None = None


class Color(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Pet(BaseModel):
    name: str
    species: Literal["cat", "dog", "bird"]
    color: Color
    age_years: int | None = None


class Weather(BaseModel):
    city: str
    temperature_celsius: float
    humidity_percent: int = Field(ge=0, le=100)
    chance_of_rain: float = Field(ge=0, le=1)


class Book(BaseModel):
    title: str
    authors: list[str]
    year: int
    rating: float | None = None
    tags: list[str] = []


class Team(BaseModel):
    team: str
    members: list[Person]
    lead: Person | None = None


class Meeting(BaseModel):
    title: str
    day: datetime.date
    priority: Literal[1, 2, 3]
    attendees: list[str] = Field(max_length=5)


# (model, question): the question the demo model answers in JSON.
SCHEMA_SET: list[tuple[type[BaseModel], str]] = [
    (Person, "Invent a person and give their name, age and email."),
    (Customer, "Describe a customer of a bakery in Paris with their address."),
    (Order, "Write an order for two pizzas and a drink."),
    (Pet, "Describe a family pet."),
    (Weather, "What is the weather like in London today?"),
    (Book, "Tell me about a famous novel."),
    (Team, "Describe a small software team of two people."),
    (Meeting, "Plan a project meeting for next week."),
]


def messages(model: type[BaseModel], question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{question} Answer in JSON."}]


def closed(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object that does not say otherwise."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out
