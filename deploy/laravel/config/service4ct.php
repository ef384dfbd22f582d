<?php

declare(strict_types=1);

// config/service4ct.php
return [
    // base URL of the Service4CT API (in Kubernetes: http://service4ct-api.service4ct.svc)
    'url' => env('SERVICE4CT_URL', 'http://127.0.0.1:8000'),
    // `service4ct apikey create <client>` prints the key and the client's webhook secret once
    'api_key' => env('SERVICE4CT_API_KEY'),
    'webhook_secret' => env('SERVICE4CT_WEBHOOK_SECRET'),
    // the URL Service4CT calls when a job finishes (this app's webhook route); unset: jobs poll
    'callback_url' => env('SERVICE4CT_CALLBACK_URL'),
    // seconds; uploads of large studies get their own, longer timeout
    'timeout' => (int) env('SERVICE4CT_TIMEOUT', 30),
    'upload_timeout' => (int) env('SERVICE4CT_UPLOAD_TIMEOUT', 900),
    // seconds a polling SubmitStudyToService4CT waits for its job before looking again later
    'poll_timeout' => (int) env('SERVICE4CT_POLL_TIMEOUT', 900),
    // a webhook whose timestamp is further than this from now is refused (replay protection)
    'webhook_tolerance' => (int) env('SERVICE4CT_WEBHOOK_TOLERANCE', 300),
];
