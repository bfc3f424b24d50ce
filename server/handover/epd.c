/* epd.c — the encoder-instance side of vLLM's EPD proxy (epd.h): the chat completions request it sends for one
 * image, and the chat.completion answer carrying ec_transfer_params. Registration lives in epd_announce.c. */
#include "epd.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cJSON.h>

#include "body.h"
#include "content_id.h"
#include "util.h"

/* The one image part: found when *part is still NULL, a 400 for a second one or a non-image part. */
static vitd_status take_part(const cJSON *p, int m, int k, const cJSON **part, vitd_err *err) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
    if (!cJSON_IsObject(p) || !cJSON_IsString(type))
        return vitd_fail(err, VITD_E_INVALID_ARG, "messages[%d].content[%d]: a part is an object with a \"type\"",
                         m, k);
    if (strcmp(type->valuestring, "image_url") != 0)
        return vitd_fail(err, VITD_E_INVALID_ARG, "messages[%d].content[%d]: a \"%.40s\" part; an encoder instance "
                         "takes exactly one image_url part", m, k, type->valuestring);
    if (*part)
        return vitd_fail(err, VITD_E_INVALID_ARG, "messages[%d].content[%d]: a second image; an encoder instance "
                         "takes one image per request (vLLM's proxy sends one)", m, k);
    *part = p;
    return VITD_OK;
}

/* Rejects what vitd cannot honour among the request's other fields. */
static vitd_status check_fields(const cJSON *root, vitd_err *err) {
    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(root, "stream");
    if (cJSON_IsTrue(stream))
        return vitd_fail(err, VITD_E_INVALID_ARG, "stream: true is not served: an encoder instance answers once, "
                         "after the cache file is written (send \"stream\": false)");
    const cJSON *ec = cJSON_GetObjectItemCaseSensitive(root, "ec_transfer_params");
    if (cJSON_IsObject(ec) && cJSON_GetObjectItemCaseSensitive(ec, "consumer_zmq"))
        return vitd_fail(err, VITD_E_INVALID_ARG, "ec_transfer_params.consumer_zmq: vitd hands embeddings over "
                         "through shared-storage cache files (ECExampleConnector), not ZMQ");
    return VITD_OK;
}

vitd_status epd_parse(const uint8_t *body, size_t len, arena *a, epd_request *out, vitd_err *err) {
    memset(out, 0, sizeof *out);
    if (len == 0) return vitd_fail(err, VITD_E_INVALID_ARG, "empty body");
    cJSON *root = body_json_parse(a, body, len, err); /* in the arena: never deleted here */
    if (!root) return err->code;
    vitd_status st = VITD_OK;
    const cJSON *part = NULL;
    if (!cJSON_IsObject(root)) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "a chat completions body is an object, not %s", body_json_type(root));
        goto done;
    }
    if ((st = check_fields(root, err))) goto done;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (cJSON_IsString(model) && strlen(model->valuestring) < sizeof out->model) /* else the served name */
        snprintf(out->model, sizeof out->model, "%s", model->valuestring);
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "\"messages\" must be a non-empty array");
        goto done;
    }
    int m = 0;
    for (const cJSON *msg = msgs->child; msg; msg = msg->next, m++) {
        const cJSON *content = cJSON_IsObject(msg) ? cJSON_GetObjectItemCaseSensitive(msg, "content") : NULL;
        if (!content || cJSON_IsNull(content)) continue;
        if (cJSON_IsString(content)) {
            if (!content->valuestring[0]) continue;
            st = vitd_fail(err, VITD_E_INVALID_ARG, "messages[%d].content: text; an encoder instance takes exactly "
                           "one image_url part", m);
            goto done;
        }
        if (!cJSON_IsArray(content)) {
            st = vitd_fail(err, VITD_E_INVALID_ARG, "messages[%d].content must be an array of parts, not %s", m,
                           body_json_type(content));
            goto done;
        }
        int k = 0;
        for (const cJSON *p = content->child; p; p = p->next, k++)
            if ((st = take_part(p, m, k, &part, err))) goto done;
    }
    if (!part) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "no image_url part in \"messages\"");
        goto done;
    }
    const cJSON *iu = cJSON_GetObjectItemCaseSensitive(part, "image_url");
    const cJSON *url = cJSON_IsObject(iu) ? cJSON_GetObjectItemCaseSensitive(iu, "url") : iu;
    if (!cJSON_IsString(url) || !url->valuestring[0]) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "image_url: expected {\"url\": \"data:image/...;base64,...\"}");
        goto done;
    }
    if ((st = body_image_string(a, 0, url->valuestring, &out->image, err))) goto done;
    const cJSON *uuid = cJSON_GetObjectItemCaseSensitive(part, "uuid");
    if (uuid && !cJSON_IsNull(uuid)) {
        if (!cJSON_IsString(uuid)) {
            st = vitd_fail(err, VITD_E_INVALID_ARG, "uuid must be a string, not %s", body_json_type(uuid));
            goto done;
        }
        if (!content_id_uuid_ok(uuid->valuestring, strlen(uuid->valuestring), err)) {
            st = VITD_E_INVALID_ARG;
            goto done;
        }
        snprintf(out->uuid, sizeof out->uuid, "%s", uuid->valuestring);
    } else {
        /* the id vLLM's proxy gives a part without one: SHA-256 of the URL string */
        uint8_t h[32];
        content_id_sha256(url->valuestring, strlen(url->valuestring), h);
        for (int i = 0; i < 32; i++) snprintf(out->uuid + 2 * i, 3, "%02x", h[i]);
        out->derived = true;
    }
done:
    return st; /* the tree is the request arena's */
}

char *epd_render(const epd_request *q, const vitd_grid *g, long long tokens, const char *req_id,
                 const char *served_model, bool keyed, size_t *len) {
    strbuf b = {0};
    strbuf_puts(&b, "{\"id\":");
    char id[96];
    snprintf(id, sizeof id, "chatcmpl-%s", req_id);
    strbuf_json_string(&b, id);
    strbuf_printf(&b, ",\"object\":\"chat.completion\",\"created\":%lld,\"model\":", (long long)time(NULL));
    strbuf_json_string(&b, q->model[0] ? q->model : served_model);
    strbuf_puts(&b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"\"},"
                    "\"logprobs\":null,\"finish_reason\":\"stop\",\"stop_reason\":null}],");
    strbuf_printf(&b, "\"usage\":{\"prompt_tokens\":%lld,\"completion_tokens\":0,\"total_tokens\":%lld},", tokens,
                  tokens);
    strbuf_puts(&b, "\"kv_transfer_params\":null,\"ec_transfer_params\":{");
    if (keyed) {
        strbuf_json_string(&b, q->uuid);
        strbuf_printf(&b, ":{\"metadata\":{\"image_grid_thw\":[%d,%d,%d]},\"item_indices\":[0]}}}\n", g->t, g->h,
                      g->w);
    } else {
        strbuf_puts(&b, "\"ec_items\":[{\"mm_hash\":");
        strbuf_json_string(&b, q->uuid);
        strbuf_printf(&b, ",\"image_grid_thw\":[%d,%d,%d]}]}}\n", g->t, g->h, g->w);
    }
    char *text = strbuf_finish(&b);
    if (text) *len = b.len;
    return text;
}
