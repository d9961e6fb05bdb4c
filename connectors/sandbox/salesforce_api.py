"""The HTTP face of the fake Salesforce: its OAuth token endpoint and sObject REST API, over `FakeSalesforce`.

What it reproduces of Salesforce is listed in `connectors.sandbox.salesforce`,
which keeps the records; this module checks each request as Salesforce does
and answers in its shapes.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connectors.sandbox.recording import basic_credentials, bearer_token, control_routes, fault_answer, oauth_error
from connectors.sandbox.salesforce import (
    CONVERSION_FIELDS, ID_PREFIXES, QUEUE_OWNED, RECORD_ID, REFERENCES, REQUIRED_ON_CREATE, FakeSalesforce, new_record_id,
)
from hub.clock import utcnow


def salesforce_errors(status: int, code: str, message: str, fields: list[str] | None = None,
                      headers: dict[str, str] | None = None) -> Response:
    return JSONResponse([{"message": message, "errorCode": code, "fields": fields or []}], status, headers)


def duplicate_value(field: str, holder_id: str) -> Response:
    """Salesforce's refusal of a unique field's value another record holds; its ``fields`` list stays empty."""
    return salesforce_errors(
        400, "DUPLICATE_VALUE", f"duplicate value found: {field} duplicates value on record with id: {holder_id}"
    )


def converted_lead() -> Response:
    return salesforce_errors(400, "CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")


def inactive_owner(user_id: str, sobject: str) -> Response:
    """Salesforce's refusal to make a deactivated user the owner of a record, new or not."""
    message = f"operation performed with inactive user [{user_id}] as owner of {sobject.lower()}"
    return salesforce_errors(400, "INACTIVE_OWNER_OR_USER", message)


def reference_types(sobject: str, field: str) -> tuple[str, ...]:
    """The object types a reference field of `sobject` may point at: a queue may own a Lead, never a Task."""
    queue = ("Group",) if field == "OwnerId" and sobject in QUEUE_OWNED else ()
    return REFERENCES[field] + queue


@dataclass(frozen=True)
class _Call:
    sobject: str
    params: dict[str, str]
    body: Any


def create_app(fake: FakeSalesforce) -> Starlette:
    """The ASGI app serving `fake`: login, sObject endpoints and ``/_sandbox/`` controls."""

    def problem_with(sobject: str, data: Any, creating: bool) -> Response | None:
        """Salesforce's checks on a record body, in its order: shape, fields, ids, required fields."""
        if not isinstance(data, dict):
            return salesforce_errors(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        for field, value in data.items():
            if field not in fake.fields[sobject]:
                return salesforce_errors(400, "INVALID_FIELD", f"No such column '{field}' on sobject of type {sobject}")
            if field in REFERENCES and value is not None:
                if not isinstance(value, str) or not RECORD_ID.fullmatch(value):
                    return salesforce_errors(400, "MALFORMED_ID", f"{field}: id value of incorrect type: {value}", [field])
                if value[:3] not in {ID_PREFIXES[t] for t in reference_types(sobject, field)} or not fake._exists(value):
                    return salesforce_errors(
                        400, "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {value}", [field]
                    )
                if fake._converted(value):
                    return converted_lead()
                if field == "OwnerId" and fake._inactive_user(value):
                    return inactive_owner(value, sobject)
        missing = [name for name in REQUIRED_ON_CREATE[sobject] if creating and not data.get(name)]
        if missing:
            return salesforce_errors(
                400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing
            )
        return None

    def upsert(call: _Call) -> Response:
        field, value = call.params["field"], call.params["value"]
        if field not in fake.external_ids[call.sobject]:
            return salesforce_errors(
                404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {field}"
            )
        existing = fake._find(call.sobject, field, value)
        if existing is not None and fake._converted(existing["Id"]):
            return converted_lead()
        if problem := problem_with(call.sobject, call.body, creating=existing is None):
            return problem
        if existing is None and fake._loses_race():
            rival = fake._write(call.sobject, new_record_id(call.sobject), {**call.body, field: value})
            return duplicate_value(field, rival["Id"])
        record_id = existing["Id"] if existing else new_record_id(call.sobject)
        fake._write(call.sobject, record_id, {**call.body, field: value})
        result = {"id": record_id, "success": True, "errors": [], "created": existing is None}
        return JSONResponse(result, status_code=200 if existing else 201)

    def by_external_id(call: _Call, found: Callable[[dict[str, Any]], Response]) -> Response:
        """`found` of the record the call's external id names, or Salesforce's 404 for no such field or record."""
        field = call.params["field"]
        if field not in fake.external_ids[call.sobject]:
            return salesforce_errors(
                404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {field}"
            )
        record = fake._find(call.sobject, field, call.params["value"])
        if record is None:
            return salesforce_errors(404, "NOT_FOUND", "The requested resource does not exist")
        return found(record)

    def get_by_external_id(call: _Call) -> Response:
        return by_external_id(call, JSONResponse)

    def delete_by_external_id(call: _Call) -> Response:
        def delete(record: dict[str, Any]) -> Response:
            fake.delete_record(call.sobject, record["Id"])
            return Response(status_code=204)

        return by_external_id(call, delete)

    def found_id(call: _Call) -> str | Response:
        """The call's record id, or Salesforce's answer when it is malformed or names no record of its type."""
        record_id = call.params["record_id"]
        if not RECORD_ID.fullmatch(record_id):
            return salesforce_errors(400, "MALFORMED_ID", f"Invalid id: {record_id}")
        if fake._find(call.sobject, "Id", record_id) is None:
            if fake._recycled(record_id):
                return salesforce_errors(404, "ENTITY_IS_DELETED", "entity is deleted")
            return salesforce_errors(404, "NOT_FOUND", "The requested resource does not exist")
        return record_id

    def get_by_id(call: _Call) -> Response:
        if isinstance(record_id := found_id(call), Response):
            return record_id
        return JSONResponse(fake._find(call.sobject, "Id", record_id))

    def update_by_id(call: _Call) -> Response:
        if isinstance(record_id := found_id(call), Response):
            return record_id
        if fake._converted(record_id):
            return converted_lead()
        if problem := problem_with(call.sobject, call.body, creating=False):
            return problem
        for field in fake.external_ids[call.sobject] & set(call.body):
            holder = fake._find(call.sobject, field, call.body[field])
            if holder is not None and holder["Id"] != record_id:
                return duplicate_value(field, holder["Id"])
        fake._write(call.sobject, record_id, call.body)
        return Response(status_code=204)

    def delete_by_id(call: _Call) -> Response:
        if isinstance(record_id := found_id(call), Response):
            return record_id
        fake.delete_record(call.sobject, record_id)
        return Response(status_code=204)

    def describe(call: _Call) -> Response:
        """The type's fields, as much of Salesforce's describe as the hub reads: each field's name."""
        names = {"Id", *fake.fields[call.sobject], *(CONVERSION_FIELDS if call.sobject == "Lead" else ())}
        return JSONResponse({"name": call.sobject, "fields": [{"name": name} for name in sorted(names)]})

    def create(call: _Call) -> Response:
        if problem := problem_with(call.sobject, call.body, creating=True):
            return problem
        record_id = new_record_id(call.sobject)
        fake._write(call.sobject, record_id, call.body)
        return JSONResponse({"id": record_id, "success": True, "errors": []}, status_code=201)

    async def serve(request: Request, handler: Callable[[_Call], Response]) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        fault = fake._next_fault()
        if fault is not None:
            response = await fault_answer(
                fault, lambda f, headers: salesforce_errors(f.status, f.code, f.message, headers=headers)
            )
        elif not fake.sessions.valid(bearer_token(request)):
            response = salesforce_errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
        elif (sobject := request.path_params["sobject"]) not in fake.fields:
            response = salesforce_errors(404, "NOT_FOUND", "The requested resource does not exist")
        else:
            response = handler(_Call(sobject, dict(request.path_params), body))
        fake._record({
            "method": request.method,
            "path": request.url.path,
            "json": body,
            "status": response.status_code,
            "fault": fault is not None,
        })
        return response

    def api(handler: Callable[[_Call], Response]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            return await serve(request, handler)

        return endpoint

    def login(request: Request, form: dict[str, str]) -> Response:
        """The OAuth token endpoint's answer to a grant: a session, or RFC 6749's error shape."""
        grant = form.get("grant_type", "")
        if grant == "password":
            client = (form.get("client_id"), form.get("client_secret"))
            user = (form.get("username"), form.get("password"))
        elif grant == "client_credentials":
            client, user = basic_credentials(request), (fake.username, fake.password)
        else:
            return oauth_error("unsupported_grant_type", "grant type not supported")
        if client != (fake.consumer_key, fake.consumer_secret):
            return oauth_error("invalid_client_id", "client identifier invalid")
        if user != (fake.username, fake.password):
            return oauth_error("invalid_grant", "authentication failure")
        return JSONResponse({
            "access_token": fake.sessions.issue(),
            "instance_url": fake.instance_url,
            "id": f"https://login.salesforce.com/id/00D5a0000000001/{fake.owner_id}",
            "token_type": "Bearer",
            "issued_at": str(int(utcnow().timestamp() * 1000)),
            "signature": base64.b64encode(secrets.token_bytes(32)).decode(),
        })

    async def token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        fault = fake._next_login_fault()
        if fault is not None:
            answer = await fault_answer(fault, lambda f, headers: JSONResponse(
                {"error": f.code, "error_description": f.message}, f.status, headers
            ))
        else:
            answer = login(request, form)
        fake._record({"method": "POST", "path": request.url.path, "json": {"grant_type": form.get("grant_type", "")},
                      "status": answer.status_code, "fault": fault is not None})
        return answer

    data = "/services/data/v{version}/sobjects/{sobject}"
    routes = [
        Route("/services/oauth2/token", token, methods=["POST"]),
        Route(f"{data}/", api(create), methods=["POST"]),
        Route(f"{data}/describe", api(describe), methods=["GET"]),
        Route(f"{data}/{{record_id}}", api(get_by_id), methods=["GET"]),
        Route(f"{data}/{{record_id}}", api(update_by_id), methods=["PATCH"]),
        Route(f"{data}/{{record_id}}", api(delete_by_id), methods=["DELETE"]),
        Route(f"{data}/{{field}}/{{value}}", api(upsert), methods=["PATCH"]),
        Route(f"{data}/{{field}}/{{value}}", api(get_by_external_id), methods=["GET"]),
        Route(f"{data}/{{field}}/{{value}}", api(delete_by_external_id), methods=["DELETE"]),
        *control_routes(fake, fake.state),
    ]
    return Starlette(routes=routes)
