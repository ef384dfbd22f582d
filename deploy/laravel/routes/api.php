<?php

declare(strict_types=1);

// routes/api.php: the webhook endpoint, POST /api/service4ct/webhook. Routes in api.php carry no
// CSRF middleware; the HMAC signature is the authentication. Give Service4CT this URL as callback_url.

use App\Http\Controllers\Service4CTWebhookController;
use Illuminate\Support\Facades\Route;

Route::post('/service4ct/webhook', Service4CTWebhookController::class)
    ->middleware('throttle:120,1')
    ->name('service4ct.webhook');
