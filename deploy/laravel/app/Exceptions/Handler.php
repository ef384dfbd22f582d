<?php

declare(strict_types=1);

namespace App\Exceptions;

use Illuminate\Foundation\Exceptions\Handler as ExceptionHandler;
use Illuminate\Http\Request;
use Throwable;

class Handler extends ExceptionHandler
{
    /**
     * An API-only app: every error is rendered as JSON (no HTML error pages, no views).
     *
     * @param Request $request
     */
    protected function shouldReturnJson($request, Throwable $e): bool
    {
        return true;
    }
}
