"""Drives facefs's emulator with the official Feishu Python SDK (lark-oapi),
as a real app would drive the service, and prints what it got as JSON for
tests/official_sdk.rs to check against the emulator's own data.

Environment: FACEFS_EMULATOR (base URL), FEISHU_APP_ID, FEISHU_APP_SECRET,
FACEFS_UPLOAD (a JPEG file the SDK uploads as the first user's face).
"""

import json
import os
import sys

import lark_oapi as lark
from lark_oapi.api.acs.v1 import (
    GetUserFaceRequest,
    GetUserRequest,
    ListUserRequest,
    UpdateUserFaceRequest,
)
from lark_oapi.api.acs.v1.model.file import File

client = (
    lark.Client.builder()
    .app_id(os.environ["FEISHU_APP_ID"])
    .app_secret(os.environ["FEISHU_APP_SECRET"])
    .domain(os.environ["FACEFS_EMULATOR"])
    .log_level(lark.LogLevel.ERROR)
    .build()
)


def fail(what, response):
    sys.exit(f"{what}: code {response.code}, msg {response.msg!r}")


def list_kind(kind):
    """Every user of one id kind, page by page, as the SDK pages."""
    users, pages, token = [], 0, None
    while True:
        builder = ListUserRequest.builder().page_size(7).user_id_type(kind)
        if token:
            builder = builder.page_token(token)
        response = client.acs.v1.user.list(builder.build())
        if not response.success():
            fail(f"list {kind}", response)
        pages += 1
        for item in response.data.items or []:
            users.append([item.user_id, bool(item.feature and item.feature.face_uploaded)])
        if not response.data.has_more:
            return users, pages
        token = response.data.page_token


def face(kind, user_id, cropped):
    request = (
        GetUserFaceRequest.builder()
        .user_id(user_id)
        .user_id_type(kind)
        .is_cropped(cropped)
        .build()
    )
    response = client.acs.v1.user_face.get(request)
    if not response.success():
        return {"code": response.code}
    return {"code": 0, "hex": response.file.read().hex()}


result = {"lists": {}, "pages": {}, "faces": [], "users": []}
for kind in ["open_id", "union_id", "user_id"]:
    users, pages = list_kind(kind)
    result["lists"][kind] = users
    result["pages"][kind] = pages

open_ids = result["lists"]["open_id"]
with_face = [u for u, has in open_ids if has][:2]
without_face = [u for u, has in open_ids if not has][:1]
for user_id in with_face:
    for cropped in [False, True]:
        result["faces"].append([user_id, cropped, face("open_id", user_id, cropped)])
for user_id in without_face:
    result["faces"].append([user_id, False, face("open_id", user_id, False)])
result["faces"].append(["ou_nobody", False, face("open_id", "ou_nobody", False)])

for user_id in with_face[:1] + ["ou_nobody"]:
    response = client.acs.v1.user.get(
        GetUserRequest.builder().user_id(user_id).user_id_type("open_id").build()
    )
    user = response.data.user if response.success() else None
    result["users"].append(
        [user_id, response.code, user.user_id if user else None,
         bool(user and user.feature and user.feature.face_uploaded)]
    )

with open(os.environ["FACEFS_UPLOAD"], "rb") as image:
    body = File.builder().files(image).file_type("jpg").file_name("face.jpg").build()
    request = (
        UpdateUserFaceRequest.builder()
        .user_id(with_face[0])
        .user_id_type("open_id")
        .request_body(body)
        .build()
    )
    response = client.acs.v1.user_face.update(request)
    result["upload"] = [with_face[0], response.code, response.msg]

print(json.dumps(result))
